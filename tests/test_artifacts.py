"""Shared artifacts: two processes that need the same run at once train it once; the second waits
on the run's lock and reads the finished record. Also the lock itself: refusing, or waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from ltbench.augment import build_recipes
from ltbench.config import resolve_config
from ltbench.data import InMemoryLoader
from ltbench.distributed import DistInfo
from ltbench.evaluate import evaluate
from ltbench.records import RunDir
from ltbench.runner import build_data, build_method, ensure_trained, final_weights, run_dir_for

TINY = ["data.img_max=20", "data.val_per_class=2", "data.test_per_class=4"]

ASK = """
import json, pathlib, sys
from ltbench.runner import ensure_trained
from ltbench.config import resolve_config
results, ready = sys.argv[1], pathlib.Path(sys.argv[2])
cfg = resolve_config("ce", "synthetic_lt", "smoke", %r, 0)
ready.touch()
result = ensure_trained(cfg, results)
print(json.dumps({"trained": not result.already_done, "finished_at": result.record["finished_at"]}))
""" % (TINY,)


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_processes_asking_at_once_train_it_once(tmp_path):
    results = tmp_path / "results"
    run = run_dir_for(resolve_config("ce", "synthetic_lt", "smoke", TINY, 0), results)
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with run.lock():  # both ask while the run is held: both must wait, neither may fail
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", ASK, str(results), str(r)], stdout=subprocess.PIPE, text=True, env=env
            )
            for r in ready
        ]
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # both are now inside ensure_trained, blocked on the lock
        assert all(p.poll() is None for p in procs)
    answers = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(a["trained"] for a in answers) == [False, True]
    assert answers[0]["finished_at"] == answers[1]["finished_at"]  # one record, read by both
    assert run.read_record()["resumes"] == 0


def test_other_ranks_wait_for_rank_zero(results):
    cfg = resolve_config("ce", "synthetic_lt", "smoke", TINY, 0)
    got = {}
    waiter = threading.Thread(
        target=lambda: got.update(
            rank1=ensure_trained(cfg, results, dist=DistInfo(rank=1, world_size=2, local_rank=1), poll_seconds=0.05)
        )
    )
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # nothing to read yet
    trained = ensure_trained(cfg, results)
    waiter.join(timeout=30)
    assert not trained.already_done and got["rank1"].already_done
    assert got["rank1"].record == trained.record


def test_final_weights_reproduce_the_recorded_counts(results):
    cfg = resolve_config("ce", "synthetic_lt", "smoke", TINY, 0)
    run = ensure_trained(cfg, results).run
    data = build_data(cfg)
    method = build_method(cfg, data)
    method.load_state_dict(final_weights(run))  # strict: every parameter and buffer
    split = data.split("test")
    recipe = build_recipes(["default"], data, train=False)[0]
    batches = InMemoryLoader(split, torch.arange(len(split)), 64, [recipe.batch], torch.device("cpu"), seed=0)
    recorded = run.read_record()["splits"]["test"]["heads"]
    assert evaluate(method, batches, data.num_classes, DistInfo())["heads"] == recorded


def test_lock_refuses_or_waits_for_its_holder(tmp_path):
    run = RunDir(tmp_path / "run")
    probe = (
        "import sys, time\nfrom ltbench.records import RunDir, RunLockedError\nrun = RunDir(sys.argv[1])\n"
        "try:\n    run.lock().__enter__()\nexcept RunLockedError:\n    print('refused', flush=True)\n"
        "with run.lock(wait=True):\n    print(time.time(), flush=True)\n"
    )
    with run.lock():
        proc = subprocess.Popen([sys.executable, "-c", probe, str(run.path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "refused"  # the default: held by us, so an error
        time.sleep(0.5)
        released = time.time()
    acquired = float(proc.stdout.readline())  # wait=True: blocked until we let go
    assert proc.wait(timeout=60) == 0 and acquired >= released
