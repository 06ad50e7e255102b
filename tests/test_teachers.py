"""Runs that need runs: a student's teacher is an ordinary run, trained once before the student
seeds anything, shared by later students, resumed after a crash, frozen, never saved with the
student; or an existing checkpoint whose content hash is part of the student's run id."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import toy_methods  # noqa: F401  (registers toy_linear and toy_student)
from conftest import stop_at_step

from ltbench.config import config_from_dict, resolve_config
from ltbench.errors import ConfigError, LTBenchError
from ltbench.method import DataInfo
from ltbench.registry import METHODS
from ltbench.runner import build_data, load_teachers, run_dir_for, train
from ltbench.trainer import TrainingInterrupted

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def student(seed: int = 0, *sets: str):
    return resolve_config("toy_student", "synthetic_lt", sets=list(sets), seed=seed)


def teacher_of(cfg):
    return METHODS.get("toy_student").requires(cfg)["teacher"]


def stamps(run) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in run.path.iterdir()}


def test_a_teacher_is_trained_once_and_shared_by_two_students(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ltbench")
    first = train(student(0), tmp_path, progress=False)
    tcfg = teacher_of(student(0))
    teacher_run = run_dir_for(tcfg, tmp_path)
    assert teacher_run.is_done() and teacher_run.path.parent.name == "toy_linear"
    teacher_record = teacher_run.read_record()
    entry = first.record["teachers"]["teacher"]
    assert entry["run_id"] == tcfg.run_id() == teacher_record["run_id"] and entry["method"] == "toy_linear"
    assert entry["run_dir"] == str(teacher_run.path)
    assert set(entry["test"]) == {"overall", "balanced", "many", "medium", "few"}
    assert 0 <= entry["test"]["overall"] <= 100
    assert "its teacher: trained run" in caplog.text
    # the teacher is not part of the student's checkpoints
    saved = torch.load(first.run.checkpoint, weights_only=False)["model"]
    assert set(saved) == {"fc.weight", "fc.bias"}

    caplog.clear()
    before = stamps(teacher_run)
    second = train(student(1), tmp_path, progress=False)
    assert f"its teacher: reusing the finished run {tcfg.run_id()}" in caplog.text
    assert second.record["teachers"]["teacher"]["run_id"] == tcfg.run_id()
    assert stamps(teacher_run) == before  # not trained, not re-saved
    assert len(list((tmp_path / "runs" / "synthetic_lt" / "toy_linear").iterdir())) == 1


def test_the_teacher_reaches_the_student_frozen(tmp_path):
    cfg = student(0)
    data = build_data(cfg)
    teachers = load_teachers(cfg, data, torch.device("cpu"), tmp_path)
    teacher = teachers.modules["teacher"]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    method = METHODS.get("toy_student")(cfg, DataInfo.of(data), teachers.modules)
    assert method.teachers["teacher"] is teacher
    assert not any(name.startswith("teacher") for name, _ in method.named_modules() if name)
    assert set(method.state_dict()) == {"fc.weight", "fc.bias"}


def test_a_teacher_on_other_data_is_refused_naming_both_fingerprints(tmp_path):
    cfg = student(0, "method.teacher_data_seed=7")
    mine = build_data(cfg).fingerprint
    theirs = build_data(teacher_of(cfg)).fingerprint
    assert mine != theirs
    with pytest.raises(ConfigError, match=f"fingerprint {theirs}.*this run on {mine}"):
        train(cfg, tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()  # nothing trained, not even the teacher


def test_a_resumed_student_neither_retrains_nor_resaves_its_teacher(tmp_path):
    cfg = student(0, "stages.train.epochs=2")
    reference = train(cfg, tmp_path / "reference", progress=False)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "stopped", progress=False, on_trainer=stop_at_step(5))
    teacher_run = run_dir_for(teacher_of(cfg), tmp_path / "stopped")
    before = stamps(teacher_run)
    resumed = train(cfg, tmp_path / "stopped", progress=False)
    assert resumed.record["resumes"] == 1
    assert stamps(teacher_run) == before
    assert resumed.record["splits"] == reference.record["splits"]
    expected = {"teacher": {**reference.record["teachers"]["teacher"], "run_dir": str(teacher_run.path)}}
    assert json.dumps(resumed.record["teachers"]) == json.dumps(expected)  # NaN-safe (an empty shot group)


def test_loss_terms_are_averaged_per_epoch_into_the_metrics(tmp_path):
    res = train(student(0), tmp_path, progress=False)
    evals = [e for e in res.run.read_metrics() if not e.get("final")]
    terms = evals[0]["train_terms"]
    assert set(terms) == {"loss", "ce", "kl"}
    assert terms["loss"] == pytest.approx(0.5 * terms["ce"] + 0.5 * terms["kl"], rel=1e-5)
    assert evals[0]["train_loss"] == terms["loss"]


def test_a_teacher_checkpoint_replaces_the_teacher_run_and_names_the_student(tmp_path):
    donor = train(resolve_config("toy_linear", "synthetic_lt", sets=["stages.train.epochs=2"]), tmp_path / "donor")
    path = tmp_path / "teacher.pt"
    path.write_bytes(donor.run.checkpoint.read_bytes())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()

    cfg = student(0, f"method.teacher_checkpoint={path}")
    assert cfg.files == {"method.teacher_checkpoint": sha}
    assert cfg.run_id() != student(0).run_id()
    assert config_from_dict(cfg.to_dict()).run_id() == cfg.run_id()
    moved = tmp_path / "elsewhere.pt"
    moved.write_bytes(path.read_bytes())
    assert student(0, f"method.teacher_checkpoint={moved}").run_id() == cfg.run_id()  # content, not path

    res = train(cfg, tmp_path / "results", progress=False)
    assert res.record["teachers"]["teacher"] == {
        "checkpoint": str(path.resolve()),
        "sha256": sha,
        "method": "toy_linear",
    }
    assert res.record["config"]["files"] == {"method.teacher_checkpoint": sha}
    assert not (tmp_path / "results" / "runs" / "synthetic_lt" / "toy_linear").exists()  # no teacher run

    other = torch.load(path, weights_only=False)
    other["model"]["fc.bias"] += 1
    torch.save(other, path)
    assert student(0, f"method.teacher_checkpoint={path}").run_id() != cfg.run_id()
    stale = config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "seed": 1}})
    with pytest.raises(LTBenchError, match="changed since this run was configured"):
        train(stale, tmp_path / "results", progress=False)


def test_a_missing_teacher_checkpoint_is_a_clear_error():
    with pytest.raises(ConfigError, match="no such file"):
        student(0, "method.teacher_checkpoint=/nonexistent/teacher.pt")


def _start_student(out: Path, sets: list[str]) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import toy_methods; "
        "from ltbench.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["run", "--method", "toy_student", "--dataset", "synthetic_lt", "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=TESTS.parent)


@pytest.mark.slow
def test_kill_9_while_the_teacher_trains_then_rerun_the_student(tmp_path):
    sets = ["method.teacher_epochs=30"]
    cfg = student(0, *sets)
    teacher_run = run_dir_for(teacher_of(cfg), tmp_path)
    proc = _start_student(tmp_path, sets)
    deadline = time.time() + 120
    while True:
        try:
            position = torch.load(teacher_run.checkpoint, weights_only=False)["state"]["position"]
        except (FileNotFoundError, EOFError, RuntimeError):
            position = None
        if position is not None and position["epoch"] >= 2:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            break
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("the teacher ended (or never checkpointed) before the kill point")
        time.sleep(0.01)
    assert not teacher_run.is_done() and not run_dir_for(cfg, tmp_path).path.exists()

    res = train(cfg, tmp_path, progress=False)  # the same student command again
    assert teacher_run.read_record()["resumes"] == 1  # the teacher resumed, then finished
    assert res.record["teachers"]["teacher"]["run_id"] == teacher_run.path.name
    assert res.record["resumes"] == 0


def test_a_slurm_sweep_submits_the_shared_teacher_first_and_students_after_it(results, monkeypatch):
    import ltbench.cluster.sweep as sweep_mod
    from ltbench.cluster.slurm import ClusterConfig
    from ltbench.cluster.sweep import Sweep, expand_grid

    submitted = []

    class FakeSlurm:  # records each array with the sbatch extras it was submitted with
        parameters = {"additional_parameters": {"qos": "low"}}

        def update_parameters(self, **kw):
            self.parameters.update(kw)

        def submit_array(self, fns):
            submitted.append(
                ([job.config["method_name"] for job in fns], dict(self.parameters["additional_parameters"]))
            )
            return [SimpleNamespace(job_id=f"{100 + len(submitted)}_{i}") for i in range(len(fns))]

    monkeypatch.setattr(sweep_mod, "make_executor", lambda launcher, folder, cluster: FakeSlurm())
    monkeypatch.setattr(sweep_mod, "max_array_size", lambda: 100)
    configs = expand_grid(["toy_student"], ["synthetic_lt"], [0, 1, 2])
    sweep = Sweep.open(configs, "slurm", ClusterConfig(), results)
    tid = teacher_of(configs[0]).run_id()
    assert len(sweep.runs) == 4 and sweep.runs[tid]["role"] == "teacher"
    assert sweep_mod.submit(sweep)[0] == tid
    assert submitted == [
        (["toy_linear"], {"qos": "low"}),
        (["toy_student"] * 3, {"qos": "low", "dependency": "afterok:101_0", "kill_on_invalid_dep": "yes"}),
    ]
    assert FakeSlurm.parameters["additional_parameters"] == {"qos": "low"}  # restored after the students


def test_dry_run_names_the_teacher_run(cli, results):
    code, out, _ = cli("run", "--method", "toy_student", "--dataset", "synthetic_lt", "--dry-run")
    assert code == 0
    tid = teacher_of(student(0)).run_id()
    assert f"needs its teacher run (trained first): {results}/runs/synthetic_lt/toy_linear/{tid}" in out


def test_section_sets_reproduce_the_students_data_and_its_files_location(tmp_path):
    from ltbench.config import section_sets

    cfg = student(0, "data.img_max=33", f"data.root={tmp_path}", "data.seed=4")
    again = resolve_config("toy_linear", "synthetic_lt", sets=section_sets(cfg, "data"))
    assert again.data == cfg.data and again.data.root == str(tmp_path)
