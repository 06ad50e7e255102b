"""Against a real Slurm cluster (the one-node test cluster of scripts/slurm-cluster.sh):

- a sweep of 2 methods x 2 seeds is submitted as one job array, every run finishes, `ltbench
  report` lists them, and the same command again submits nothing;
- a job interrupted through submitit's preemption path checkpoints, requeues itself, resumes
  mid-stage and ends with the weights and counts of an uninterrupted run; `ltbench status`
  follows it through running, pending (requeued) and done;
- a failing run is shown as failed with its error, and `sweep --relaunch` resubmits only it;
- a job with two tasks trains with DDP (ranks and rendezvous from submitit's job environment).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest
import torch
from submitit import SlurmJob

import ltbench.cluster.sweep as sweep_mod
from ltbench.cluster.slurm import ClusterConfig
from ltbench.cluster.sweep import Sweep, expand_grid, status, submit, wait
from ltbench.config import resolve_config
from ltbench.runner import final_weights, run_dir_for

TEST_CLUSTER = os.environ.get("LTBENCH_SLURM_TEST_CLUSTER", "ltbench-test")
TINY = ["data.img_max=20", "data.val_per_class=2", "data.test_per_class=4"]
TINY_ARGS = [a for s in TINY for a in ("--set", s)]


def _why_no_cluster() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm is not installed; `sudo bash scripts/slurm-cluster.sh up` installs and starts a test cluster"
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if answer.returncode:
        return (
            f"no Slurm cluster answers sinfo ({answer.stderr.strip()}); start the test cluster with "
            "`sudo bash scripts/slurm-cluster.sh up`"
        )
    match = re.search(r"^ClusterName\s*=\s*(\S+)", config, re.MULTILINE)
    name = match.group(1) if match else "?"
    if name != TEST_CLUSTER:
        return (
            f"the Slurm cluster here is {name!r}, not ltbench's test cluster {TEST_CLUSTER!r}; set "
            f"LTBENCH_SLURM_TEST_CLUSTER={name} to submit the test jobs to it"
        )
    return None


WHY = _why_no_cluster()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(WHY is not None, reason=WHY or "")]


@pytest.fixture(autouse=True)
def quick_polling(monkeypatch):
    monkeypatch.setattr(sweep_mod, "WAIT_POLL_S", 1.0)


def test_sweep_is_one_array_and_report_lists_it(cli, results):
    args = [
        "sweep",
        "--methods",
        "ce,ride",
        "--datasets",
        "synthetic_lt",
        "--seeds",
        "0-1",
        "--preset",
        "smoke",
        *TINY_ARGS,
        "--launcher",
        "slurm",
        "--time",
        "10",
    ]
    code, out, err = cli(*args, "--wait")
    assert code == 0, out + err
    assert "4 of 4 runs submitted" in out and "4 done" in out
    sweep = Sweep.load(next((results / "sweeps").iterdir()))
    jobs = [entry["jobs"] for entry in sweep.runs.values()]
    assert all(len(j) == 1 for j in jobs)
    arrays = {j[0].split("_")[0] for j in jobs}
    assert len(arrays) == 1 and sorted(j[0].split("_")[1] for j in jobs) == ["0", "1", "2", "3"]
    # the sbatch file submitit wrote from ltbench's parameters (the dry run shows those parameters)
    sbatch = SlurmJob(sweep.jobs_folder, jobs[0][0]).paths.submission_file.read_text()
    for line in ("--array=0-3%4", "--job-name=ltbench", "--nodes=1", "--ntasks-per-node=1", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in sbatch, sbatch
    assert "#SBATCH --time=10\n" in sbatch and "--kill-on-bad-exit" not in sbatch  # one task: no srun option

    code, out, _ = cli("report", "--root", str(results))
    assert code == 0
    rows = [line for line in out.splitlines() if "synthetic_lt" in line and "ltbench" in line]
    assert sorted(row.split("|")[2].strip() for row in rows) == ["ce", "ride"]
    assert all(row.split("|")[5].strip() == "2" for row in rows)  # n = 2 seeds each

    code, out, _ = cli(*args)  # the same sweep again: everything is finished, nothing is submitted
    assert code == 0 and "0 of 4 runs submitted" in out
    assert [len(entry["jobs"]) for entry in Sweep.load(sweep.path).runs.values()] == [1, 1, 1, 1]


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_interrupted_job_requeues_resumes_and_matches_an_uninterrupted_run(tmp_path):
    # ~1,200 training images, 3 epochs, a checkpoint every 4 steps: the interrupt lands mid-epoch
    cfg = resolve_config(
        "ce", "synthetic_lt", "smoke", ["data.img_max=300", "stages.train.epochs=3", "train.checkpoint_steps=4"], 0
    )
    interrupted = Sweep.open([cfg], "slurm", ClusterConfig(time=10), tmp_path / "interrupted")
    reference = Sweep.open([cfg], "slurm", ClusterConfig(time=10), tmp_path / "reference")
    submit(interrupted)
    submit(reference)
    run = interrupted.run_dir(cfg.run_id())
    _wait_until(run.checkpoint.exists, 300, "the first checkpoint")
    assert [s.state for s in status(interrupted)] == ["running"]

    SlurmJob(interrupted.jobs_folder, interrupted.latest_job(cfg.run_id()))._interrupt()  # SIGTERM, then USR2
    _wait_until(lambda: status(interrupted)[0].state == "pending", 60, "the requeued job to be pending")
    final = wait(interrupted, timeout=600)
    assert [s.state for s in final] == ["done"]
    assert [s.state for s in wait(reference, timeout=600)] == ["done"]

    resumed = re.findall(r"resuming .* at stage train, epoch (\d+), batch (\d+)", run.log.read_text())
    assert len(resumed) == 1 and int(resumed[0][1]) > 0  # one requeue, from the middle of an epoch
    record = run.read_record()
    straight = reference.run_dir(cfg.run_id()).read_record()
    assert record["resumes"] == 1 and straight["resumes"] == 0
    assert record["splits"] == straight["splits"]
    a, b = final_weights(run), final_weights(reference.run_dir(cfg.run_id()))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert len(interrupted.runs[cfg.run_id()]["jobs"]) == 1  # the same job, requeued


def test_failed_run_shows_its_error_and_relaunch_resubmits_only_it(cli, results):
    configs = expand_grid(["ce"], ["synthetic_lt"], [0, 1], "smoke", TINY)
    broken = run_dir_for(configs[1], results)
    broken.path.mkdir(parents=True)
    broken.checkpoint.write_text("not a checkpoint")  # its job fails when it tries to resume
    args = [
        "--methods",
        "ce",
        "--datasets",
        "synthetic_lt",
        "--seeds",
        "0-1",
        "--preset",
        "smoke",
        *TINY_ARGS,
        "--launcher",
        "slurm",
        "--time",
        "10",
    ]
    code, out, _ = cli("sweep", *args, "--wait")
    assert code == 1
    sweep = Sweep.load(next((results / "sweeps").iterdir()))
    code, out, _ = cli("status", "--sweep", str(sweep.path))
    assert code == 0 and "1 done" in out and "1 failed" in out
    failed_line = next(line for line in out.splitlines() if configs[1].run_id() in line)
    assert failed_line.startswith("| failed") and "without finishing the run" in failed_line
    assert "UnpicklingError" in out  # the last lines of its error
    assert "1 done, 1 failed" in cli("status", "--root", str(results))[1]

    broken.checkpoint.unlink()
    code, out, _ = cli("sweep", "--relaunch", str(sweep.path), "--wait")
    assert code == 0 and "1 of 2 runs submitted" in out and "2 done" in out
    jobs = {rid: entry["jobs"] for rid, entry in Sweep.load(sweep.path).runs.items()}
    assert len(jobs[configs[0].run_id()]) == 1 and len(jobs[configs[1].run_id()]) == 2


def test_two_task_job_trains_with_ddp(cli, results):
    code, out, err = cli(
        "run",
        "--method",
        "ce",
        "--dataset",
        "synthetic_lt",
        "--preset",
        "smoke",
        *TINY_ARGS,
        "--launcher",
        "slurm",
        "--tasks-per-node",
        "2",
        "--time",
        "10",
        "--wait",
    )
    assert code == 0, out + err
    record = run_dir_for(resolve_config("ce", "synthetic_lt", "smoke", TINY), results).read_record()
    assert record["world_size"] == 2
    assert record["splits"]["test"]["heads"]["main"]["total"] == [4] * 10  # each test image once
