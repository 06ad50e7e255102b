"""Runs that need runs on a real Slurm cluster (scripts/slurm-cluster.sh): a sweep of two distilled
RIDE students submits their shared teacher once, as its own job, and the students as one array
that waits for it (afterok); a failed teacher fails its students, naming the teacher's run."""

from __future__ import annotations

import json

import pytest
from test_slurm_cluster import WHY

import ltbench.cluster.sweep as sweep_mod
from ltbench.cluster.sweep import Sweep
from ltbench.config import resolve_config
from ltbench.methods.ride import RIDE
from ltbench.runner import run_dir_for

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(WHY is not None, reason=WHY or "")]

SETS = ["method.distill=true", "method.teacher_experts=4", "data.img_max=20", "data.val_per_class=2",
        "data.test_per_class=4"]  # fmt: skip
ARGS = ["--methods", "ride", "--datasets", "synthetic_lt", "--seeds", "0-1", "--preset", "smoke",
        *(a for s in SETS for a in ("--set", s)), "--launcher", "slurm", "--time", "10"]  # fmt: skip


@pytest.fixture(autouse=True)
def quick_polling(monkeypatch):
    monkeypatch.setattr(sweep_mod, "WAIT_POLL_S", 1.0)


def teacher_id() -> str:
    return RIDE.requires(resolve_config("ride", "synthetic_lt", "smoke", SETS, 0))["teacher"].run_id()


def test_one_teacher_job_then_one_dependent_student_array(cli, results):
    code, out, err = cli("sweep", *ARGS, "--wait")
    assert code == 0, out + err
    assert "3 of 3 runs submitted" in out and "3 done" in out
    sweep = Sweep.load(next((results / "sweeps").iterdir()))
    tid = teacher_id()
    students = {rid: e for rid, e in sweep.runs.items() if rid != tid}
    assert sweep.runs[tid]["role"] == "teacher" and len(students) == 2
    assert all(e["teachers"] == {"teacher": tid} for e in students.values())
    teacher_job = sweep.runs[tid]["jobs"][0]
    arrays = {e["jobs"][0].split("_")[0] for e in students.values()}
    assert len(arrays) == 1 and arrays != {teacher_job.split("_")[0]}  # one array of students
    script = next(sweep.jobs_folder.glob(f"{arrays.pop()}*submission.sh")).read_text()
    assert f"--dependency=afterok:{teacher_job}" in script and "--kill-on-invalid-dep=yes" in script
    teacher_run = sweep.run_dir(tid)
    finished = teacher_run.read_record()["finished_at"]
    for rid in students:
        record = sweep.run_dir(rid).read_record()
        assert record["teachers"]["teacher"]["run_id"] == tid
        assert json.loads((sweep.run_dir(rid).path / "config.json").read_text())["method"]["distill"] is True
        assert sweep.run_dir(rid).config.stat().st_mtime >= teacher_run.record.stat().st_mtime  # after the teacher
    assert teacher_run.read_record()["finished_at"] == finished and teacher_run.read_record()["resumes"] == 0
    code, out, _ = cli("status", "--sweep", str(sweep.path))
    teacher_line = next(line for line in out.splitlines() if tid in line)
    assert code == 0 and teacher_line.startswith("| done") and teacher_line.rstrip(" |").endswith("teacher")


def test_a_failed_teacher_fails_its_students_naming_its_run(cli, results):
    tcfg = RIDE.requires(resolve_config("ride", "synthetic_lt", "smoke", SETS, 0))["teacher"]
    broken = run_dir_for(tcfg, results)
    broken.path.mkdir(parents=True)
    broken.checkpoint.write_text("not a checkpoint")  # the teacher's job fails when it tries to resume
    code, out, _ = cli("sweep", *ARGS, "--wait")
    assert code == 1
    sweep = Sweep.load(next((results / "sweeps").iterdir()))
    code, out, _ = cli("status", "--sweep", str(sweep.path))
    assert "3 failed" in out
    student_lines = [line for line in out.splitlines() if "its teacher run" in line]
    assert len(student_lines) == 2 and all(str(broken.path) in line for line in student_lines)
