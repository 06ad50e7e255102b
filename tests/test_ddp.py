"""DDP on the CPU: two gloo processes train one run together (tests/ddp_worker.py, started like
torchrun workers); and the ranks and rendezvous a Slurm job's tasks derive from submitit.

- The per-class correct/total counts in run.json, summed over the ranks' unpadded evaluation
  shards, equal a single-process evaluation of the same final weights, and count every image once.
- A stop seen by one rank only (a preemption signal) stops both ranks at the same step after one
  checkpoint, and the resumed two-process run ends with the weights and counts of the
  uninterrupted one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ltbench.distributed as distributed
from ltbench.augment import build_recipes
from ltbench.config import resolve_config
from ltbench.data import InMemoryLoader
from ltbench.distributed import DistInfo
from ltbench.evaluate import evaluate
from ltbench.runner import build_data, build_method, run_dir_for

WORKER = Path(__file__).with_name("ddp_worker.py")
# 7 classes: 21 val and 35 test images, odd counts that two ranks cannot split evenly
SPEC = {
    "method": "ce",
    "dataset": "synthetic_lt",
    "preset": "smoke",
    "sets": ["data.num_classes=7", "data.val_per_class=3", "data.test_per_class=5"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(results: Path, world: int = 2, timeout: float = 120, **extra) -> list[int]:
    """Start ``world`` worker processes on one rendezvous port; their exit statuses."""
    spec = json.dumps({**SPEC, "results": str(results), **extra})
    env = {
        **os.environ,
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), spec], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(world)
    ]
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def config():
    return resolve_config(SPEC["method"], SPEC["dataset"], SPEC["preset"], SPEC["sets"])


def final_weights(results: Path) -> dict:
    return torch.load(run_dir_for(config(), results).checkpoint, weights_only=False)["model"]


@pytest.fixture(autouse=True)
def clean_environ():
    """init_from_job exports RANK, WORLD_SIZE, MASTER_PORT, ... into os.environ, where monkeypatch
    cannot restore variables that were absent before: put the whole environment back afterwards, so
    that no later test (an in-process sweep job) believes it is one rank of eight."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize(
    "slurm, expected",
    [
        (
            {
                "SLURM_NTASKS": "2",
                "SLURM_JOB_NUM_NODES": "1",
                "SLURM_NODEID": "0",
                "SLURM_PROCID": "1",
                "SLURM_LOCALID": "1",
                "SLURM_JOB_NODELIST": "vm",
            },
            {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"},
        ),
        (
            {
                "SLURM_NTASKS": "8",
                "SLURM_JOB_NUM_NODES": "2",
                "SLURM_NODEID": "1",
                "SLURM_PROCID": "5",
                "SLURM_LOCALID": "1",
                "SLURM_JOB_NODELIST": "gpu[012-013]",
            },
            {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "gpu012"},
        ),
    ],
)
def test_rendezvous_from_the_slurm_job_environment(monkeypatch, slurm, expected):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    monkeypatch.setattr(distributed, "init_from_env", lambda backend=None, timeout_minutes=30.0: dict(os.environ))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the trainer picks cuda:LOCAL_RANK itself

    def rendezvous(job_id: str, rank: str) -> dict:
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(name, raising=False)
        env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": job_id, **slurm, "SLURM_PROCID": rank}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return distributed.init_from_job()

    seen = rendezvous("41234", slurm["SLURM_PROCID"])
    # ranks from Slurm's task ids; the first node of the job is the master (loopback on one node)
    assert {k: seen[k] for k in expected} == expected
    # every task of job 41234 (and the job again after a requeue) meets on the same port, in
    # submitit's range; another job (the next array task) on another one
    ports = {rendezvous("41234", rank)["MASTER_PORT"] for rank in ("0", "1", slurm["SLURM_PROCID"])}
    assert len(ports) == 1 and 20000 <= int(seen["MASTER_PORT"]) <= 60000
    assert rendezvous("41235", "0")["MASTER_PORT"] != seen["MASTER_PORT"]
    assert seen["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_one_task_job_sets_no_rendezvous(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}.items():
        monkeypatch.setenv(name, value)
    assert distributed.init_from_job() == distributed.DistInfo()
    assert "MASTER_PORT" not in os.environ and "WORLD_SIZE" not in os.environ


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("ddp") / "results"
    assert run_ranks(results) == [0, 0]
    return results


@pytest.mark.slow
def test_summed_counts_equal_single_process_evaluation(uninterrupted):
    cfg = config()
    record = run_dir_for(cfg, uninterrupted).read_record()
    assert record["world_size"] == 2
    data = build_data(cfg)
    method = build_method(cfg, data)
    method.load_state_dict(final_weights(uninterrupted))
    recipe = build_recipes(["default"], data, train=False)[0]
    for split_name, per_class in (("val", 3), ("test", 5)):
        split = data.split(split_name)
        batches = InMemoryLoader(split, torch.arange(len(split)), 16, [recipe.batch], torch.device("cpu"), seed=0)
        single_split = evaluate(method, batches, data.num_classes, DistInfo())
        single, summed = single_split["heads"]["main"], record["splits"][split_name]["heads"]["main"]
        assert summed["total"] == [per_class] * 7  # every image once: no padding duplicates
        assert summed == single
        # the confidences too: every rank scored its shard with rank 0's BatchNorm statistics, the
        # checkpoint's, not the ones its own last training batch left
        assert record["splits"][split_name]["ece"] == pytest.approx(single_split["ece"], abs=1e-9)
        assert sum(single["correct"]) > 0


@pytest.mark.slow
def test_stop_on_one_rank_stops_both_and_resume_matches(uninterrupted, tmp_path):
    results = tmp_path / "results"
    assert run_ranks(results, stop_rank=1) == [3, 3]  # rank 1 saw the signal; both stopped
    run = run_dir_for(config(), results)
    state = torch.load(run.checkpoint, weights_only=False)
    # the ranks all-reduce their stop flags every train.log_every (20) optimizer steps, not at each
    # one: the stop asked for before the first step lands on step 20 (10 steps per epoch)
    assert state["state"]["position"] == {"stage": 0, "epoch": 1, "batch": 10}
    assert len(state["rng"]) == 2 and not run.is_done()

    assert run_ranks(results) == [0, 0]
    record, reference = run.read_record(), run_dir_for(config(), uninterrupted).read_record()
    assert record["resumes"] == 1
    assert record["splits"] == reference["splits"]
    resumed, straight = final_weights(results), final_weights(uninterrupted)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_sam_under_ddp_equals_one_process_with_the_global_batch(tmp_path):
    """Two ranks of 16 images with SAM take the steps of one process with batches of 32: the
    ascent uses the gradient DDP has already averaged over the ranks (a BN-free linear model,
    full batches only, so both see the same images per step)."""
    import toy_methods  # noqa: F401  (registers toy_linear)

    from ltbench.runner import train

    sets = ["stages.train.batch_size=32", "stages.train.drop_last=true", "stages.train.optim.sam_rho=0.3"]
    assert run_ranks(tmp_path / "ddp", method="toy_linear", preset=None, sets=sets) == [0, 0]
    cfg = resolve_config("toy_linear", "synthetic_lt", None, sets)
    single = train(cfg, tmp_path / "single", progress=False)
    a = torch.load(run_dir_for(cfg, tmp_path / "ddp").checkpoint, weights_only=False)["model"]
    b = torch.load(single.run.checkpoint, weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in b)
    plain = resolve_config("toy_linear", "synthetic_lt", None, sets[:2])
    c = torch.load(train(plain, tmp_path / "plain", progress=False).run.checkpoint, weights_only=False)["model"]
    assert not torch.allclose(c["fc.weight"], b["fc.weight"], atol=1e-4)  # SAM did change the steps
