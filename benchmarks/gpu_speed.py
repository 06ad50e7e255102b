"""Trainer against a bare loop on the GPU, for the paper presets that issue 25 measured.

For ``ce``, ``ride``, ``livt`` (its MGP and BFT stages apart) and ``deit_lt`` (the student, with
its LDAM-DRW teacher loaded from a checkpoint of an untrained teacher: the cost is the same) on
CIFAR-10-LT-sized generated data (CIFAR-10 pickles in the real format, so the long-tailed subset
has its 12,406 training images), it prints:

- the trainer's img/s, from ``run.json`` (training wall time, which includes what the user pays
  for: data path, logging, validation, checkpoints);
- a bare loop's img/s: the same method's ``train_step`` (same model, batch, precision) on batches
  already on the GPU, with the same optimizer, nothing else;
- their ratio, and the GPU utilisation sampled every 0.5 s by a thread (pynvml, else nvidia-smi;
  ``n/a`` on the CPU);
- with ``--concurrent K``: the summed img/s of K seeds trained at once on the same GPU, one
  process each (for small launch-bound models such as ResNet-32 at batch 128, the other remedy
  besides CUDA graphs).

``main(argv)`` is what ``benchmarks/gpu_check.py --speed`` runs; ``--tiny`` (the smoke presets on
a few generated images, on the CPU) is what the test suite runs so that this script cannot rot.

    python benchmarks/gpu_speed.py [--epochs 1] [--presets ce ride livt_mgp livt_bft deit_lt] [--concurrent 4]
    python benchmarks/gpu_speed.py --device cpu --tiny --presets ce
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ltbench.config import resolve_config
from ltbench.data import Batch
from ltbench.method import StepContext
from ltbench.optim import build_optimizer, effective_lr
from ltbench.precision import autocast as precision_autocast
from ltbench.precision import resolve_precision
from ltbench.registry import METHODS, load_plugins
from ltbench.runner import build_data, build_method, load_teachers, train

# name -> (method, the stage measured; None: the first). LiVT trains both stages in one run (its
# MGP alone has no classifier to evaluate) and each is timed from run.json's wall time per stage
PRESETS = {
    "ce": ("ce", None),
    "ride": ("ride", None),
    "livt_mgp": ("livt", "mgp"),
    "livt_bft": ("livt", "bft"),
    "deit_lt": ("deit_lt", None),
}


# ----------------------------------------------------------------------------- data


def write_cifar10(root: Path, per_class: int, test_per_class: int) -> Path:
    """CIFAR-10 python pickles (random pixels) in the real format: 5 training batches, a test
    batch, batches.meta; ``per_class=5000`` is the real size."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    data = rng.randint(0, 256, (len(labels), 3072), dtype=np.uint8)
    for i, rows in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        entry = {b"batch_label": f"data_batch_{i}".encode(), b"data": data[rows], b"labels": labels[rows].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry, protocol=2))
    test = np.repeat(np.arange(10), test_per_class)
    entry = {b"data": rng.randint(0, 256, (len(test), 3072), dtype=np.uint8), b"labels": test.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"class{c}" for c in range(10)]}))
    return root


# ----------------------------------------------------------------------------- GPU utilisation


class Utilisation:
    """Samples the GPU's utilisation (%) every ``every`` seconds in a thread while in the block."""

    def __init__(self, device: torch.device, every: float = 0.5) -> None:
        self.samples: list[float] = []
        self.every, self.index = every, device.index or 0
        self.read = self._reader() if device.type == "cuda" else None
        self._stop = threading.Event()

    def _reader(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # no pynvml (or no NVML): nvidia-smi, when present
            if shutil.which("nvidia-smi") is None:
                return None
            query = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            return lambda: float(subprocess.run(query, capture_output=True, text=True, check=True).stdout.split()[0])

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.samples.append(self.read())
            except Exception:
                return

    def __enter__(self) -> Utilisation:
        if self.read is not None:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.read is not None:
            self.thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


# ----------------------------------------------------------------------------- the two loops


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(cfg, device: torch.device):
    """The trainer's autocast for ``train.precision`` on ``device``, and whether fp16 loss scaling
    goes with it (one definition: :mod:`ltbench.precision`)."""
    precision = resolve_precision(cfg.train.precision, device)
    return precision_autocast(precision, device), precision == "fp16"


def bare_loop(cfg, data, teachers, device: torch.device, stage: str, steps: int, warmup: int) -> float:
    """img/s of the method's own ``train_step`` in ``stage`` on fixed batches already on the
    device, with the stage's optimizer and (fp16) loss scaling: nothing but forward, backward, step."""
    scfg = cfg.stages[stage]
    torch.manual_seed(0)
    method = build_method(cfg, data, teachers).to(device)
    for name in cfg.stages:
        method.enter_stage(name)
        if name == stage:
            break
    if device.type == "cuda" and sum(isinstance(m, torch.nn.Conv2d) for m in method.modules()) > 1:
        method.to(memory_format=torch.channels_last)  # as the trainer does on CUDA
    method.set_train_mode(stage)
    lr = effective_lr(scfg.optim, scfg.batch_size)
    opt = build_optimizer(method.param_groups(stage, scfg.optim), scfg.optim, lr)
    cast, fp16 = autocast(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    size, chans, n = data.image_size, data.in_chans, scfg.batch_size
    memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    views = [torch.randn(n, chans, size, size, device=device).contiguous(memory_format=memory) for _ in scfg.augment]
    batch = Batch(views, torch.randint(0, data.num_classes, (n,), device=device), torch.arange(n, device=device))
    ctx = StepContext(stage, 1, scfg.epochs, 0, steps)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        with cast:
            loss = method.train_step(batch, ctx)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return steps * n / (time.perf_counter() - start)


def stage_speed(cfg, record: dict, stage: str) -> float:
    """img/s of ``stage`` from a run.json: its epochs' images over its wall time (validation and
    checkpoints included)."""
    return cfg.stages[stage].epochs * sum(record["train_counts"]) / record["wall_time"][stage]


def concurrent_speed(cfg, sets: list[str], out: Path, stage: str, copies: int) -> float:
    """Summed img/s of ``copies`` seeds of the preset trained at once on the same device, each in
    its own ``ltbench run`` process (what a small, launch-bound model gains from sharing a GPU)."""
    code = "import sys; from ltbench.cli import main; sys.exit(main(sys.argv[1:]))"
    base = [sys.executable, "-c", code, "run", "--method", cfg.method_name, "--dataset", cfg.dataset_name]
    base += ["--preset", cfg.preset, "--out", str(out), "--quiet"]
    for line in sets:
        base += ["--set", line]
    procs = [subprocess.Popen([*base, "--seed", str(100 + k)], stdout=subprocess.DEVNULL) for k in range(copies)]
    if any(p.wait() for p in procs):
        raise RuntimeError("a concurrent run failed")
    return sum(stage_speed(cfg, json.loads(r.read_text()), stage) for r in out.glob("runs/*/*/*/run.json"))


def teacher_files(cfg, out: Path) -> list[str]:
    """``--set`` lines giving every run the method requires (DeiT-LT's LDAM-DRW teacher) as a
    checkpoint file of an untrained network (the same cost), instead of training it first."""
    load_plugins()
    sets = []
    for name, tcfg in METHODS.get(cfg.method_name).requires(cfg).items():
        teacher = build_method(tcfg, build_data(tcfg))
        for stage in tcfg.stages:
            teacher.enter_stage(stage)
        path = out / f"{name}.pt"
        torch.save(teacher.state_dict(), path)
        sets.append(f"method.{name}_checkpoint={path}")
    return sets


# ----------------------------------------------------------------------------- main


def measure(name: str, args: argparse.Namespace, root: Path, device: torch.device) -> dict:
    method, stage = PRESETS[name]
    preset = "smoke" if args.tiny else "paper"
    sets = [f"data.root={root}", f"train.device={device.type}", *args.set]
    if args.epochs:
        sets += [f"stages.{s}.epochs={args.epochs}" for s in resolve_config(method, "cifar10_lt", preset).stages]
    if args.tiny:
        sets += ["data.val_per_class=2", "data.img_max=40", "data.imb_factor=10"]  # every class keeps images
    cfg = resolve_config(method, "cifar10_lt", preset, sets)
    out = Path(tempfile.mkdtemp(prefix=f"gpu_speed-{name}-", dir=args.work))
    teachers = teacher_files(cfg, out)  # DeiT-LT: its teacher from a file, not a run
    if teachers:
        sets += teachers
        cfg = resolve_config(method, "cifar10_lt", preset, sets)
    data = build_data(cfg)
    teachers = load_teachers(cfg, data, device, out, progress=False).modules
    stage = stage or next(s for s in cfg.stages if cfg.stages[s].epochs > 0)
    with Utilisation(device) as util:
        record = train(cfg, out / "runs", progress=False).record
    ours = stage_speed(cfg, record, stage)
    bare = bare_loop(cfg, data, teachers, device, stage, args.steps, args.warmup)
    extra_row = {}
    if args.concurrent > 1:
        together = concurrent_speed(cfg, sets, out / "concurrent", stage, args.concurrent)
        extra_row = {"concurrent": args.concurrent, "concurrent_img_s": round(together, 1)}
    return {
        "preset": name,
        "method": method,
        "stage": stage,
        "batch": cfg.stages[stage].batch_size,
        "train_images": sum(record["train_counts"]),
        "trainer_img_s": round(ours, 1),
        "bare_img_s": round(bare, 1),
        "ratio": round(ours / bare, 3),
        "gpu_util_mean": None if util.mean is None else round(util.mean, 1),
        "gpu_util_samples": len(util.samples),
        **extra_row,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    p.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--epochs", type=int, default=1, help="epochs of every stage of the trainer run (0: the preset's)")
    p.add_argument("--steps", type=int, default=50, help="timed steps of the bare loop")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps of the bare loop first")
    p.add_argument("--concurrent", type=int, default=1, help="also train this many seeds at once (summed img/s)")
    p.add_argument("--tiny", action="store_true", help="smoke presets on a few generated images (the CPU test)")
    p.add_argument("--set", nargs="*", default=[], help="extra --set lines for every run")
    p.add_argument("--work", default=None, help="folder for the generated data and runs (default: a temp dir)")
    p.add_argument("--out", help="write the rows as JSON to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="gpu_speed-", dir=args.work) as tmp:
        args.work = tmp
        root = write_cifar10(Path(tmp) / "data", *((50, 10) if args.tiny else (5000, 1000)))
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"{name}, torch {torch.__version__}, {'smoke' if args.tiny else 'paper'} presets on generated CIFAR-10")
        print(f"{'preset':>9} | {'trainer img/s':>13} | {'bare img/s':>10} | {'ratio':>5} | GPU util")
        rows = []
        for preset in args.presets:
            row = measure(preset, args, root, device)
            rows.append(row)
            util = "n/a" if row["gpu_util_mean"] is None else f"{row['gpu_util_mean']:.1f} %"
            speeds = f"{row['trainer_img_s']:13.1f} | {row['bare_img_s']:10.1f} | {row['ratio']:5.2f}"
            together = (
                f" | {row['concurrent']} seeds at once: {row['concurrent_img_s']:.1f} img/s"
                if "concurrent" in row
                else ""
            )
            print(f"{preset:>9} | {speeds} | {util}{together}", flush=True)
    print(json.dumps(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
