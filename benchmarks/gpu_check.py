"""Correctness on a GPU node, in one call of under 8 minutes (and on the CPU, tiny, in the tests).

Parts, each under the time left of ``--budget`` seconds (a part that does not fit is reported
``skipped``, never half-run):

- ``smoke``: every method's ``smoke`` preset trained and evaluated in each precision the device
  supports (CUDA: fp32, fp16, and bf16 where supported; CPU: fp32 and bf16);
- ``resume``: ``ltbench run`` SIGKILLed after its first checkpoint and run again, its per-class
  test counts compared with an uninterrupted run's;
- ``ddp``: one run over all GPUs (NCCL; world size 1 on one GPU still goes through NCCL), or two
  gloo processes on the CPU, joined the way torchrun starts them; every test image counted once;
- ``fewer``: a DDP run SIGKILLed after its first checkpoint and relaunched with one process less
  (needs two GPUs, or the CPU);
- ``speed`` (``--speed``): ``benchmarks/gpu_speed.py``, when present, in the time that is left.

    python benchmarks/gpu_check.py                    # on a GPU node: every part, 450 s budget
    python benchmarks/gpu_check.py --device cpu --tiny --methods ce   # what the test suite runs

Prints one line per check and a JSON summary (``--out FILE`` keeps it); exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ltbench.config import resolve_config
from ltbench.registry import METHODS, load_plugins
from ltbench.runner import run_dir_for, train

HERE = Path(__file__).resolve().parent
CLI = "import sys; from ltbench.cli import main; sys.exit(main(sys.argv[1:]))"
TINY = ["data.img_max=40", "data.val_per_class=4", "data.test_per_class=6"]


class Clock:
    """The budget of the whole check: parts ask for the seconds they need before they start."""

    def __init__(self, budget: float) -> None:
        self.end = time.monotonic() + budget

    def left(self) -> float:
        return self.end - time.monotonic()


def precisions(device: str) -> list[str]:
    if device == "cpu":
        return ["fp32", "bf16"]
    return ["fp32", "fp16", *(["bf16"] if torch.cuda.is_bf16_supported() else [])]


def gpu_count(device: str) -> int:
    return torch.cuda.device_count() if device == "cuda" else 0


def run_sets(args: argparse.Namespace, *extra: str) -> list[str]:
    return [f"train.device={args.device}", "train.log_every=0", *(TINY if args.tiny else []), *extra]


def smoke(args: argparse.Namespace, clock: Clock, work: Path) -> list[dict]:
    """Every method's smoke preset in each precision, in this process."""
    out = []
    for method in args.methods:
        for precision in precisions(args.device):
            check = {"part": "smoke", "method": method, "precision": precision}
            if clock.left() < args.min_part:
                out.append({**check, "outcome": "skipped", "why": "budget"})
                continue
            t0 = time.monotonic()
            try:
                cfg = resolve_config(method, "synthetic_lt", "smoke", run_sets(args, f"train.precision={precision}"))
                record = train(cfg, work / "smoke", progress=False).record
                main = record["splits"]["test"]["heads"]["main"]
                ok = record["precision"]["train"] == precision and sum(main["total"]) > 0
                check.update(outcome="ok" if ok else "failed", top1=100 * sum(main["correct"]) / sum(main["total"]))
            except Exception as err:  # one method's failure is reported, the others still run
                check.update(outcome="failed", why=f"{type(err).__name__}: {err}"[:300])
            out.append({**check, "seconds": round(time.monotonic() - t0, 1)})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    args: argparse.Namespace, out: Path, sets: list[str], world: int = 1, gpus: int = 0
) -> list[subprocess.Popen]:
    """``ltbench run`` of ce's smoke preset; ``world`` > 1: one process per rank, with torchrun's
    variables; ``gpus`` > 0: only the first ``gpus`` GPUs visible."""
    argv = [sys.executable, "-c", CLI, "run", "--method", "ce", "--dataset", "synthetic_lt", "--preset", "smoke"]
    argv += ["--quiet", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(gpus)))
    if world == 1:
        return [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
    env.update(WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    return [
        subprocess.Popen(
            argv, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for r in range(world)
    ]


def wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, end - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        return [p.wait() for p in procs]


def kill_after_first_checkpoint(procs: list[subprocess.Popen], checkpoint: Path, timeout: float) -> bool:
    """SIGKILL every process once ``checkpoint`` exists; False if they ended (or timed out) first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and all(p.poll() is None for p in procs):
        if checkpoint.exists():
            for p in procs:
                p.send_signal(signal.SIGKILL)
            for p in procs:
                p.wait()
            return True
        time.sleep(0.05)
    for p in procs:
        p.kill()
        p.wait()
    return False


def counts(run_json: Path) -> dict:
    return json.loads(run_json.read_text())["splits"]["test"]["heads"]["main"]


def record_of(out: Path, sets: list[str]) -> tuple[Path, Path]:
    run = run_dir_for(resolve_config("ce", "synthetic_lt", "smoke", sets), out)
    return run.checkpoint, run.record


def resume(args: argparse.Namespace, clock: Clock, work: Path) -> dict:
    check = {"part": "resume", "method": "ce", "precision": "fp32"}
    if clock.left() < 2 * args.min_part:
        return {**check, "outcome": "skipped", "why": "budget"}
    sets = run_sets(args, "train.precision=fp32", "train.checkpoint_steps=1", "stages.*.epochs=3")
    straight = work / "straight"
    status = wait(launch(args, straight, sets), clock.left())
    killed = work / "killed"
    checkpoint, record = record_of(killed, sets)
    if not kill_after_first_checkpoint(launch(args, killed, sets), checkpoint, clock.left()):
        return {**check, "outcome": "failed", "why": "the run ended before its first checkpoint"}
    status += wait(launch(args, killed, sets), clock.left())
    if status != [0, 0] or not record.exists():
        return {**check, "outcome": "failed", "why": f"exit statuses {status}"}
    same = counts(record) == counts(record_of(straight, sets)[1])
    resumed = json.loads(record.read_text())["resumes"]
    return {**check, "outcome": "ok" if same and resumed == 1 else "failed", "counts_equal": same, "resumes": resumed}


def ddp(args: argparse.Namespace, clock: Clock, work: Path, world: int, fewer: bool) -> dict:
    """One run over ``world`` processes; ``fewer``: SIGKILLed after its first checkpoint and
    relaunched with one process (and on CUDA one visible GPU) less, as a requeue onto a smaller node."""
    check = {
        "part": "fewer" if fewer else "ddp",
        "world_size": world,
        "backend": "gloo" if args.device == "cpu" else "nccl",
    }
    if world < (2 if fewer else 1):
        return {**check, "outcome": "skipped", "why": f"needs {2 if fewer else 1} GPUs, {world} here"}
    if clock.left() < 2 * args.min_part:
        return {**check, "outcome": "skipped", "why": "budget"}
    batch = 4 * world * max(world - 1, 1)  # divisible by the world sizes before and after the relaunch
    sets = run_sets(args, "train.precision=fp32", "train.checkpoint_steps=1", "stages.*.epochs=2")
    sets.append(f"stages.*.batch_size={batch}")
    out = work / check["part"]
    checkpoint, record = record_of(out, sets)
    gpus = world if args.device == "cuda" else 0
    if fewer:
        if not kill_after_first_checkpoint(launch(args, out, sets, world, gpus), checkpoint, clock.left()):
            return {**check, "outcome": "failed", "why": "the run ended before its first checkpoint"}
        world, gpus = world - 1, max(gpus - 1, 0)
        check["relaunch_world_size"] = world
    procs = launch(args, out, sets, world, gpus)
    status = wait(procs, clock.left())
    if any(status) or not record.exists():
        errors = b"".join(p.stderr.read() for p in procs if p.stderr).decode(errors="replace")[-300:]
        return {**check, "outcome": "failed", "why": f"exit statuses {status}: {errors}"}
    saved = json.loads(record.read_text())
    totals = counts(record)["total"]
    per_class = 6 if args.tiny else 20  # synthetic_lt's test images per class: each counted once
    ok = saved["world_size"] == world and totals == [per_class] * len(totals)
    ok = ok and (saved["resumes"] == 1 or not fewer)
    return {**check, "outcome": "ok" if ok else "failed", "resumes": saved["resumes"]}


def speed(args: argparse.Namespace, clock: Clock) -> dict:
    """The speed part lives in benchmarks/gpu_speed.py (when present); it gets the time left."""
    script = HERE / "gpu_speed.py"
    if not script.exists():
        return {"part": "speed", "outcome": "skipped", "why": "benchmarks/gpu_speed.py is absent"}
    done = subprocess.run([sys.executable, str(script)], timeout=max(1.0, clock.left()), check=False)
    return {"part": "speed", "outcome": "ok" if done.returncode == 0 else "failed"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check")
    p.add_argument("--min-part", type=float, default=5.0, help="seconds a check needs before it starts")
    p.add_argument("--methods", nargs="*", help="methods of the smoke part (default: every registered one)")
    p.add_argument("--parts", nargs="*", default=["smoke", "resume", "ddp", "fewer"])
    p.add_argument("--tiny", action="store_true", help="smaller synthetic data (the CPU run of the test suite)")
    p.add_argument("--speed", action="store_true", help="also run benchmarks/gpu_speed.py in the time left")
    p.add_argument("--out", help="write the JSON summary to this file")
    args = p.parse_args(argv)
    load_plugins()
    args.methods = args.methods or METHODS.names()
    clock = Clock(args.budget)
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    world = gpu_count(args.device) if args.device == "cuda" else 2
    checks: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        if "smoke" in args.parts:
            checks += smoke(args, clock, work)
        if "resume" in args.parts:
            checks.append(resume(args, clock, work))
        if "ddp" in args.parts:
            checks.append(ddp(args, clock, work, world, fewer=False))
        if "fewer" in args.parts:
            checks.append(ddp(args, clock, work, world, fewer=True))
        if args.speed:
            checks.append(speed(args, clock))
    for c in checks:
        print(" ".join(f"{k}={v}" for k, v in c.items()))
    summary = {"device": device, "torch": torch.__version__, "budget_s": args.budget, "checks": checks}
    summary["seconds"] = round(args.budget - clock.left(), 1)
    print(json.dumps({k: v for k, v in summary.items() if k != "checks"}))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 1 if any(c["outcome"] == "failed" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
