"""The common trainer end to end: run records, determinism, resume after SIGKILL or a stop
request at any position, NaN handling, gradient accumulation, best-val selection."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import toy_methods  # noqa: F401  (registers toy2, toy_linear, toy_nan)
from conftest import stop_at_step

from ltbench.config import resolve_config
from ltbench.errors import NonFiniteLossError
from ltbench.records import RunDir
from ltbench.runner import run_dir_for, train
from ltbench.trainer import TrainingInterrupted

TESTS = Path(__file__).resolve().parent


def finals(run: RunDir) -> dict:
    """What must not depend on interruptions: final split results and every evaluation line."""
    record = run.read_record()
    return {
        "splits": record["splits"],
        "selection": record["selection"],
        "evals": [{k: v for k, v in e.items()} for e in run.read_metrics()],
    }


def test_smoke_run_writes_a_complete_record(results, cli):
    code, out, err = cli("run", "--method", "ce", "--dataset", "synthetic_lt", "--preset", "smoke", "--quiet")
    assert code == 0, err
    assert "finished:" in out and "test: overall" in out
    (path,) = (results / "runs" / "synthetic_lt" / "ce").iterdir()
    run = RunDir(path)
    rec = run.read_record()
    cfg = resolve_config("ce", "synthetic_lt", "smoke")
    assert path.name == cfg.run_id() == rec["run_id"]
    assert rec["method"] == "ce" and rec["dataset"] == "synthetic_lt" and rec["seed"] == 0
    assert rec["config"] == cfg.to_dict() == json.loads(run.config.read_text())
    assert set(rec["versions"]) >= {"ltbench", "torch", "timm"}
    assert rec["device"] == "cpu" and rec["world_size"] == 1
    assert set(rec["wall_time"]) == {"train", "total"} and rec["wall_time"]["train"] > 0
    # --quiet silences the console only: the run's log.txt keeps every epoch line
    assert "train epoch 2/2" in run.log.read_text() and "train epoch" not in err
    assert rec["train_counts"] == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert rec["selection"] == {"policy": "last", "stage": "train", "epoch": 2}
    assert sum(rec["splits"]["test"]["heads"]["main"]["total"]) == 200
    assert sum(rec["splits"]["val"]["heads"]["main"]["total"]) == 100
    assert sum(rec["splits"]["test"]["calibration"]["count"]) == 200
    # the per-(class, bin) calibration sums add up to the main head's per-class counts and to the bins
    test, by_class = rec["splits"]["test"], rec["splits"]["test"]["calibration_by_class"]
    per_class = [[0, 0] for _ in range(10)]
    for cls, count, correct in zip(by_class["class"], by_class["count"], by_class["correct"]):
        per_class[cls][0] += correct
        per_class[cls][1] += count
    assert [c for c, _ in per_class] == test["heads"]["main"]["correct"]
    assert [n for _, n in per_class] == test["heads"]["main"]["total"]
    per_bin = [0] * 15
    for b, count in zip(by_class["bin"], by_class["count"]):
        per_bin[b] += count
    assert per_bin == test["calibration"]["count"]
    assert len(rec["dataset_fingerprint"]) == 16
    lines = run.read_metrics()
    assert [(e["split"], e["epoch"], e.get("final", False)) for e in lines] == [
        ("val", 1, False),
        ("val", 2, False),
        ("val", 2, True),
        ("test", 2, True),
    ]
    assert run.checkpoint.exists() and not list(path.glob(".*.tmp"))


def test_rerun_of_a_finished_run_does_nothing(results, cli):
    args = ("run", "--method", "ce", "--dataset", "synthetic_lt", "--preset", "smoke", "--quiet")
    assert cli(*args)[0] == 0
    (path,) = (results / "runs" / "synthetic_lt" / "ce").iterdir()
    stamp = (path / "run.json").stat().st_mtime_ns
    code, out, _ = cli(*args)
    assert code == 0 and "already finished" in out and str(path) in out
    assert (path / "run.json").stat().st_mtime_ns == stamp


def test_same_seed_same_metrics_different_seed_different_run(tmp_path):
    cfg = resolve_config("toy2", "synthetic_lt")
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    assert finals(a.run) == finals(b.run)
    other = resolve_config("toy2", "synthetic_lt", seed=1)
    c = train(other, tmp_path / "a", progress=False)
    assert c.run.path != a.run.path
    assert finals(c.run)["splits"] != finals(a.run)["splits"]


def _position(run: RunDir) -> dict | None:
    try:
        return torch.load(run.checkpoint, weights_only=False)["state"]["position"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def _start(out: Path, sets: list[str]) -> subprocess.Popen:
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import toy_methods; "
        "from ltbench.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["run", "--method", "toy2", "--dataset", "synthetic_lt", "--out", str(out), "--quiet"]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=TESTS.parent)


def _kill_when(proc: subprocess.Popen, run: RunDir, condition) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline:
        pos = _position(run) if run.checkpoint.exists() else None
        if pos is not None and condition(pos):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return pos
        if proc.poll() is not None:
            pytest.fail(f"training ended (status {proc.returncode}) before the kill point")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("kill point not reached")


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_gives_identical_results(tmp_path):
    sets = ["stages.*.epochs=4", "train.checkpoint_steps=1"]
    cfg = resolve_config("toy2", "synthetic_lt", None, sets)
    reference = train(cfg, tmp_path / "reference", progress=False)

    out = tmp_path / "killed"
    run = run_dir_for(cfg, out)
    # first kill in the middle of an epoch of stage 1, second in the middle of stage 2
    _kill_when(_start(out, sets), run, lambda p: p["stage"] == 0 and p["epoch"] == 1 and p["batch"] > 3)
    assert not run.is_done()
    _kill_when(_start(out, sets), run, lambda p: p["stage"] == 1 and p["epoch"] >= 1 and p["batch"] > 2)
    assert not run.is_done()
    resumed = train(cfg, out, progress=False)
    assert resumed.record["resumes"] == 2
    assert finals(resumed.run) == finals(reference.run)


@pytest.mark.parametrize("stop_after", [5, 13, 26, 27, 40], ids=lambda n: f"step{n}")
def test_stop_request_at_any_step_then_resume(tmp_path, stop_after):
    """Stop (as on preemption) mid-epoch, at an epoch end (13 steps per epoch), at the stage
    boundary (26) and inside stage 2; the resumed run must equal an uninterrupted one."""
    cfg = resolve_config("toy2", "synthetic_lt")
    reference = train(cfg, tmp_path / "reference", progress=False)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "stopped", progress=False, on_trainer=stop_at_step(stop_after))
    resumed = train(cfg, tmp_path / "stopped", progress=False)
    assert finals(resumed.run) == finals(reference.run)


@pytest.mark.parametrize("stop_after", [20, 40], ids=lambda n: f"step{n}")
def test_a_sampler_with_state_across_epochs_resumes_where_it_was(tmp_path, stop_after):
    """The class-balanced sampler carries its buckets from epoch to epoch: a stage resumed in
    its second epoch (step 20 of stage 1, step 40 of stage 2) must replay the first to continue
    the same draws."""
    cfg = resolve_config("toy2", "synthetic_lt", None, ["stages.*.sampler=class_balanced"])
    reference = train(cfg, tmp_path / "reference", progress=False)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "stopped", progress=False, on_trainer=stop_at_step(stop_after))
    resumed = train(cfg, tmp_path / "stopped", progress=False)
    assert finals(resumed.run) == finals(reference.run)


def test_nan_loss_stops_with_position_and_keeps_checkpoint(tmp_path):
    cfg = resolve_config("toy_nan", "synthetic_lt", None, ["train.checkpoint_steps=1", "method.nan_at_step=3"])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan in stage 'train', epoch 1, step 4"):
        train(cfg, tmp_path, progress=False)
    run = run_dir_for(cfg, tmp_path)
    assert not run.is_done()
    state = torch.load(run.checkpoint, weights_only=False)
    assert state["state"]["position"] == {"stage": 0, "epoch": 0, "batch": 3}
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_accumulation_equals_the_larger_batch(tmp_path):
    def weights(sets):
        cfg = resolve_config("toy_linear", "synthetic_lt", None, sets)
        res = train(cfg, tmp_path, progress=False)
        return torch.load(res.run.checkpoint, weights_only=False)["model"]

    big = weights(["stages.train.batch_size=32"])
    accum = weights(["stages.train.batch_size=16", "stages.train.accum_steps=2"])
    small = weights(["stages.train.batch_size=16"])
    assert torch.allclose(big["fc.weight"], accum["fc.weight"], atol=1e-6)
    assert not torch.allclose(big["fc.weight"], small["fc.weight"], atol=1e-3)


def test_best_val_selection_uses_the_best_validation_epoch(tmp_path):
    cfg = resolve_config("toy2", "synthetic_lt", None, ["eval.selection=best-val", "stages.*.epochs=3"])
    res = train(cfg, tmp_path, progress=False)
    evals = [e for e in res.run.read_metrics() if e["split"] == "val" and not e.get("final")]
    last_stage = [e for e in evals if e["stage"] == "head"]
    best = max(last_stage, key=lambda e: e["overall"])  # first maximum wins
    assert res.record["selection"]["policy"] == "best-val"
    assert res.record["selection"]["epoch"] == best["epoch"] and res.record["selection"]["stage"] == "head"
    final_val = res.record["splits"]["val"]["heads"]["main"]
    assert final_val == best["heads"]["main"]
    assert res.run.best.exists()


def test_two_processes_never_train_one_run(tmp_path):
    from ltbench.errors import LTBenchError

    cfg = resolve_config("toy2", "synthetic_lt")
    run = run_dir_for(cfg, tmp_path)
    with run.lock():
        with pytest.raises(LTBenchError, match="being trained by another process"):
            train(cfg, tmp_path, progress=False)
        assert run.state() == "running"


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    from ltbench.errors import LTBenchError

    cfg = resolve_config("toy2", "synthetic_lt")
    run = run_dir_for(cfg, tmp_path)
    run.path.mkdir(parents=True)
    run.checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(LTBenchError, match="cannot read .*checkpoint.pt .*delete it to train this run again"):
        train(cfg, tmp_path, progress=False)


def test_record_keeps_the_thread_count_and_a_resume_with_another_warns(tmp_path, caplog):
    """CPU metrics depend on the thread count (reductions split by thread): run.json names it, and a
    run resumed by a process with another count says it will not match an uninterrupted run."""
    cfg = resolve_config("toy2", "synthetic_lt")
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path, progress=False, on_trainer=stop_at_step(5))
    threads = torch.get_num_threads()
    run = run_dir_for(cfg, tmp_path)
    assert torch.load(run.checkpoint, weights_only=False)["cpu_threads"] == threads
    torch.set_num_threads(threads + 1)
    try:
        with caplog.at_level("WARNING", logger="ltbench"):
            resumed = train(cfg, tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert f"with {threads} CPU threads and resumes with {threads + 1}" in caplog.text
    assert f"OMP_NUM_THREADS={threads}" in caplog.text
    assert resumed.record["cpu_threads"] == threads + 1
