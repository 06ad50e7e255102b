"""The common trainer: stages, epochs, AMP, accumulation, DDP, checkpoints, evaluation, run record.

It drives any registered :class:`~ltbench.method.Method` through its stages and knows nothing about
which method it runs. A checkpoint is written atomically at the end of every stage, every
``train.checkpoint_minutes`` (and ``train.checkpoint_steps``) at optimizer-step boundaries, and
when a stop is requested (preemption, or Ctrl-C under :func:`stop_on_interrupt`). It holds the
model, optimizer, AMP scaler, every RNG state and the position (stage, epoch, batch), so a resumed
run continues exactly where it stopped.

Every ``train.log_every`` optimizer steps a row of ``steps.csv`` in the run directory records the
mean loss, the learning rate and every other scalar the method's ``train_step`` returns (its loss
terms); with TensorBoard installed (``pip install ltbench[tensorboard]``) the same go to ``tb/``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import __version__
from .augment import build_recipes, channels_last
from .config import Config, preset_changes
from .data import SAMPLERS, Batch, InMemoryLoader, LTData, TensorSplit, WorkerLoader, derive_seed, shard
from .distributed import DistInfo, any_rank, barrier, broadcast_buffers, gather_objects
from .errors import ConfigError, LTBenchError, NonFiniteLossError
from .evaluate import compute_record, evaluate
from .method import Method, StepContext
from .metrics import summarize
from .optim import SharpnessAware, build_optimizer, effective_lr, make_schedule, sam_rho
from .precision import autocast, resolve_precision, tf32_settings
from .records import RECORD_SCHEMA, RunDir, atomic_torch_save, atomic_write_json, atomic_write_text, git_sha

log = logging.getLogger("ltbench")


class TrainingInterrupted(Exception):
    """Raised right after the checkpoint that a stop request (preemption, time limit) asked for."""


@dataclass
class Position:
    """Next thing to do: ``batch`` of ``epoch`` (0-based) of stage number ``stage``."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass
class TrainState:
    """Where training is and what it has gathered so far, besides the weights, the optimizer, the
    AMP scaler and the RNG states: the part of a checkpoint saved and restored as a whole."""

    position: Position = field(default_factory=Position)
    best: dict | None = None  # best-val selection so far: stage, epoch, score
    wall: dict[str, float] = field(default_factory=dict)  # seconds of training per stage
    epoch_loss: dict = field(default_factory=lambda: {"sums": {}, "images": 0})  # image-weighted term sums
    resumes: int = 0
    step_rows: int = 0  # rows of steps.csv up to this checkpoint
    # steps.csv's running sums since its last row: a resumed run writes the row it would have written
    step_pending: dict = field(default_factory=lambda: {"sums": {}, "count": 0})

    @classmethod
    def from_dict(cls, saved: dict) -> TrainState:
        return cls(**{**saved, "position": Position(**saved["position"])})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """The torch, numpy and Python RNG states, and on CUDA the state of this process's own GPU
    only: a relaunch may see fewer GPUs (the GPU count is not part of the run id)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore :func:`rng_state`; the states are given to torch as CPU byte tensors (the only kind
    ``set_rng_state`` takes), wherever the checkpoint's tensors were loaded."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per visible GPU
        cuda = cuda[device.index] if device.type == "cuda" and device.index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint with every tensor on the CPU: ``load_state_dict`` then copies the model and
    optimizer state to the parameters' device, and the RNG states stay CPU byte tensors."""
    return torch.load(path, map_location="cpu", weights_only=False)


def versions() -> dict:
    import timm
    import torchvision

    return {
        "ltbench": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def loader_batch(loader) -> int:
    return loader.batch_size if isinstance(loader, InMemoryLoader) else loader.batches.batch_size


def is_convolutional(module: torch.nn.Module) -> bool:
    """More than one 2-D convolution: a CNN, not a ViT (whose only one embeds the patches)."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in module.modules()) > 1


def in_channels_last(batch: Batch) -> Batch:
    """The batch with every image view in channels-last strides (views already so are kept)."""
    views = [
        v if v.dim() != 4 or v.stride() == (v[0].numel(), 1, v.shape[3] * v.shape[1], v.shape[1]) else channels_last(v)
        for v in batch.views
    ]
    return Batch(views, batch.y, batch.index)


def match_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's strides (a state loaded from a checkpoint
    written in the other memory layout): fused and foreach kernels read them element by element."""
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[Callable[[Trainer], None]]:
    """Ctrl-C as a stop request: yields an ``on_trainer`` hook; once a trainer is attached, the
    first Ctrl-C asks it to checkpoint at the next optimizer step and stop (as on preemption:
    :class:`TrainingInterrupted`), a second one stops at once. Outside the main thread: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda trainer: None
        return
    attached: list[Trainer] = []

    def on_sigint(signum: int, frame) -> None:
        if not attached or attached[0].stop_requested:
            raise KeyboardInterrupt
        log.warning("Ctrl-C: stopping after a checkpoint at the next optimizer step (Ctrl-C again: stop at once)")
        attached[0].request_stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield attached.append
    finally:
        signal.signal(signal.SIGINT, previous)


class EpochProgress:
    """Progress of one epoch: a tqdm bar on a terminal; elsewhere (log.txt, Slurm output files) a
    log line every ``every`` seconds. Both show the ETA of the whole run: the rest of this epoch
    and ``epochs_after`` more epochs of as many images, at this epoch's speed so far."""

    def __init__(self, desc: str, total: int, initial: int, enabled: bool, every: float, epochs_after: int) -> None:
        tty = sys.stderr.isatty()
        self.desc, self.total, self.n, self.start = desc, total, initial, initial
        self.every, self.epochs_after = every, epochs_after
        self.lines = enabled and not tty and every > 0
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="img",
            leave=False,
            dynamic_ncols=True,
            disable=not (enabled and tty),
        )
        self.t0 = self.last = time.monotonic()

    def run_eta(self, now: float) -> float | None:
        """Seconds until the whole run ends; None before this epoch has a speed."""
        done, elapsed = self.n - self.start, now - self.t0
        if done <= 0 or elapsed <= 0:
            return None
        rate = done / elapsed
        return (self.total - self.n) / rate + self.epochs_after * self.total / rate

    def update(self, images: int, terms: dict[str, float]) -> None:
        self.n += images
        now = time.monotonic()
        if self.bar.disable and not (self.lines and now - self.last >= self.every):
            return
        eta = self.run_eta(now)
        shown = {k: f"{v:.4f}" for k, v in terms.items()}
        if not self.bar.disable:
            if eta is not None:
                shown["run ETA"] = _fmt_duration(eta)
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(images)
            return
        self.last = now
        line = f"{self.desc}: {self.n:,}/{self.total:,} img ({100 * self.n / max(self.total, 1):.0f} %)"
        line += f", {(self.n - self.start) / max(now - self.t0, 1e-9):.0f} img/s"
        line += "".join(f", {k} {v}" for k, v in shown.items())
        if eta is not None:
            line += f", run ETA {_fmt_duration(eta)}"
        log.info(line)

    def close(self) -> None:
        self.bar.close()


def to_host(values: dict) -> dict[str, float]:
    """Floats of a dict of 0-d tensors (and floats) with one read-back from the device."""
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor)}
    if keys:
        read = torch.stack([values[k].detach().double() for k in keys]).tolist()
        out.update(zip(keys, read))
    return {k: out[k] for k in values}


class FiniteWatch:
    """The first non-finite loss since the last :meth:`read`, recorded on the device so that no
    step waits for its loss to reach the host; the trainer checks at the points where it reads
    the device anyway (log rows, epoch ends) and before every checkpoint, so a non-finite loss
    never reaches a checkpoint and the error still names the step where it appeared."""

    def __init__(self) -> None:
        self.where: list[str] = []
        self.first: torch.Tensor | None = None  # index into `where`, -1 while every loss is finite
        self.value: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, where: str) -> None:
        if self.first is None:
            self.first = torch.full((), -1, dtype=torch.float64, device=loss.device)
            self.value = torch.zeros((), dtype=torch.float64, device=loss.device)
        new = torch.logical_and(~torch.isfinite(loss), self.first < 0)
        self.first = torch.where(new, float(len(self.where)), self.first)
        self.value = torch.where(new, loss.detach().double(), self.value)
        self.where.append(where)

    def read(self) -> tuple[str, float] | None:
        """(where, loss) of the first non-finite loss since the last read, or None; forgets them."""
        if self.first is None:
            return None
        first, value = torch.stack([self.first, self.value]).tolist()
        where, self.where, self.first, self.value = self.where, [], None, None
        return None if first < 0 else (where[int(first)], value)


class StepLog:
    """``steps.csv``: one row per ``every`` optimizer steps, the mean of each scalar since the last
    row; columns grow when a stage returns new loss terms. Optionally mirrored to TensorBoard."""

    FIXED = ("stage", "epoch", "step", "lr")

    def __init__(self, path: Path, every: int, enabled: bool) -> None:
        self.path, self.every, self.enabled = path, every, enabled and every > 0
        self.sums: dict[str, float] = {}
        self.count = 0
        self.columns: list[str] | None = None
        self.tb = None
        if self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tb"))
            except ImportError:  # TensorBoard is an optional extra
                pass

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _header(self) -> list[str]:
        with open(self.path, newline="") as f:
            return next(csv.reader(f), list(self.FIXED))

    def truncate(self, rows: int) -> None:
        """Keep the first ``rows`` rows (a resumed run redoes the steps after its checkpoint)."""
        if self.enabled and self.path.exists():
            kept = self.rows()[:rows]
            self.columns = self._columns(kept)
            self._write(kept, self.columns)

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one batch's terms; tensors stay on the device until a row is written."""
        if not self.enabled:
            return
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def step(self, stage: str, epoch: int, step: int, lr: float) -> bool:
        """After optimizer step ``step`` (1-based, in the stage); True when a row was written."""
        if not self.enabled or step % self.every or not self.count:
            return False
        row = {"stage": stage, "epoch": epoch, "step": step, "lr": lr}
        means = to_host(self.sums)  # the row's one read-back from the device
        row.update({k: v / self.count for k, v in sorted(means.items(), key=lambda kv: kv[0] != "loss")})
        self.sums, self.count = {}, 0
        if self.columns is None and self.path.exists():  # the file a resumed run continues
            self.columns = self._header()
        if self.columns is not None and all(k in self.columns for k in row):
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)
        else:  # new loss terms (a new stage): rewrite the file with the wider header
            rows = [*self.rows(), row]
            self.columns = self._columns(rows)
            self._write(rows, self.columns)
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("stage", "epoch", "step"):
                    self.tb.add_scalar(f"{stage}/{key}", value, step)
        return True

    def _columns(self, rows: list[dict]) -> list[str]:
        extra = dict.fromkeys(k for r in rows for k in r if k not in self.FIXED)
        return [*self.FIXED, *extra]

    def _write(self, rows: list[dict], columns: list[str]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, text.getvalue())


class Trainer:
    """Trains one method on one dataset inside one run directory."""

    def __init__(
        self,
        cfg: Config,
        data: LTData,
        method: Method,
        run: RunDir,
        device: torch.device,
        dist: DistInfo = DistInfo(),
        progress: bool = True,
        teachers: dict | None = None,
        waiting_epochs: int = 0,
    ) -> None:
        """``waiting_epochs``: epochs of a run that waits for this one (its student), in the ETA."""
        self.cfg, self.data, self.method, self.run = cfg, data, method, run
        self.waiting_epochs = waiting_epochs
        self.teachers = teachers or {}  # what run.json records about each teacher run
        self.device, self.dist = device, dist
        self.progress = progress and dist.is_main
        self.stage_names = list(cfg.stages)
        self.precision = resolve_precision(cfg.train.precision, device)
        self.eval_precision = self.precision if cfg.eval.precision == "train" else cfg.eval.precision
        self.amp = self.precision == "fp16"  # loss scaling: fp16 only (bf16 has fp32's exponent range)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp)
        self.state = TrainState(wall={name: 0.0 for name in self.stage_names})
        self.optimizer: torch.optim.Optimizer | None = None
        self.stop_requested = False
        self._pending_optimizer_state: dict | None = None
        if cfg.train.sync_bn and dist.enabled and device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs CUDA (SyncBatchNorm); set train.sync_bn=false on the CPU")
        self.step_log = StepLog(run.steps, cfg.train.log_every, dist.is_main)
        self.finite = FiniteWatch()
        self._eval_loaders: dict[str, WorkerLoader] = {}  # persistent evaluation workers, by split
        self._compiled: set[int] = set()  # ids of the modules train.compile has compiled
        self.channels_last = False  # set per stage (_prepare_modules)
        # every this many steps (the log's rows) the device is read: losses checked for non-finite
        # values, the progress bar's terms and, under DDP, the stop / time-checkpoint flags of all ranks
        self.flag_every = cfg.train.log_every or 20
        self._last_save = self._mark = time.monotonic()
        if cfg.eval.selection == "best-val":
            if data.val is None:
                raise ConfigError(f"eval.selection=best-val needs a val split; {data.name} has none")
            last = next((s for s in reversed(self.stage_names) if cfg.stages[s].epochs > 0), None)
            if last is not None and not method.evaluates_after(last):
                raise ConfigError(f"eval.selection=best-val: the last stage ({last}) cannot be evaluated")

    # ------------------------------------------------------------------------- public
    def request_stop(self) -> None:
        """Ask for a checkpoint at the next optimizer step, then :class:`TrainingInterrupted`."""
        self.stop_requested = True

    def fit(self) -> dict:
        """Run (or resume) every stage, then evaluate val and test and write ``run.json``."""
        entered = self._restore()
        start = self.state.position
        for s, name in enumerate(self.stage_names):
            if s < start.stage:
                continue
            if s >= entered:
                self.method.enter_stage(name)
                entered = s + 1
            if s == start.stage:
                self._run_stage(s, start.epoch, start.batch, self._pending_optimizer_state)
            else:
                self._run_stage(s, 0, 0, None)
        val = (lambda: self._evaluate("val")) if self.data.val is not None else None
        return self._finish(self.method.choose_on_val(val))

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training forward pass's autocast (``train.precision``)."""
        return autocast(self.precision, self.device)

    # ------------------------------------------------------------------------- stages
    def _run_stage(self, s: int, start_epoch: int, start_batch: int, optimizer_state: dict | None) -> None:
        name = self.stage_names[s]
        scfg = self.cfg.stages[name]
        if scfg.epochs == 0 or start_epoch >= scfg.epochs:
            return
        if scfg.batch_size % self.dist.world_size:
            raise ConfigError(
                f"stages.{name}.batch_size={scfg.batch_size} is not divisible by {self.dist.world_size} processes"
            )
        if scfg.optim.sam_rho > 0 and scfg.accum_steps > 1:
            raise ConfigError(
                f"stages.{name}: SAM (optim.sam_rho={scfg.optim.sam_rho}) needs the full batch's gradient "
                f"before its ascent step and cannot accumulate gradients (accum_steps={scfg.accum_steps}); "
                "set accum_steps=1 (raise batch_size or use more GPUs) or sam_rho=0"
            )
        sam_rho(scfg.optim, 0)  # checks the schedule before training starts
        lr = effective_lr(scfg.optim, scfg.batch_size * scfg.accum_steps)
        if self.dist.enabled:
            self._batch_norm_across_ranks(name, scfg.batch_size // self.dist.world_size)
        self._prepare_modules()
        groups = self.method.param_groups(name, scfg.optim)
        self.optimizer = build_optimizer(groups, scfg.optim, lr)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
            match_layout(self.optimizer)
        model = self.method
        if self.dist.enabled:
            model = DistributedDataParallel(
                self.method,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.method.find_unused_parameters,
            )
        recipes = build_recipes(scfg.augment, self.data, train=True)
        split = self.data.train
        in_memory = isinstance(split, TensorSplit) and all(r.batch for r in recipes)
        per_rank = scfg.batch_size // self.dist.world_size
        worker_loader = None
        if not in_memory:
            missing = [n for n, r in zip(scfg.augment, recipes) if r.sample is None]
            if missing:
                raise ConfigError(f"augment recipe(s) {missing} work only on in-memory datasets")
            worker_loader = WorkerLoader(
                split,
                per_rank,
                [r.sample for r in recipes],
                self.device,
                self.cfg.data.workers,
                scfg.drop_last,
                decode=self.cfg.data.decode,
            )
        sampler = SAMPLERS.get(scfg.sampler)
        if start_epoch == 0 and start_batch == 0 and self.method.evaluates_after(name):
            self.state.best = None  # selection looks at the last evaluated stage only
        orders = sampler(
            split.labels,
            self.data.num_classes,
            lambda e: torch.Generator().manual_seed(derive_seed(self.cfg.train.seed, s, e)),
        )
        orders = itertools.islice(orders, start_epoch, None)  # replays the epochs already trained
        for epoch, order in zip(range(start_epoch, scfg.epochs), orders):
            order = shard(order, self.dist.rank, self.dist.world_size, pad=True)
            aug_seed = derive_seed(self.cfg.train.seed, s, epoch, 1, self.dist.rank)
            first = start_batch if epoch == start_epoch else 0
            if in_memory:
                loader = InMemoryLoader(
                    split, order, per_rank, [r.batch for r in recipes], self.device, aug_seed, scfg.drop_last, first
                )
            else:
                loader = worker_loader.epoch(order, aug_seed, first)
            stats = self._train_epoch(s, epoch, model, loader, first, len(order), lr, scfg)
            self._end_epoch(s, epoch, stats)

    def _prepare_modules(self) -> None:
        """After the stage's ``enter_stage``: channels-last layout for a convolutional model
        (``train.channels_last``: auto = on CUDA), ``torch.compile`` of the method's
        :meth:`~ltbench.method.Method.compile_modules` (``train.compile``) not compiled yet."""
        mode = self.cfg.train.channels_last
        self.channels_last = mode == "on" or (mode == "auto" and self.device.type == "cuda")
        self.channels_last = self.channels_last and is_convolutional(self.method)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if self.cfg.train.compile:
            for module in self.method.compile_modules():
                if id(module) not in self._compiled:
                    module.compile()  # in place: the module and its state_dict keys stay
                    self._compiled.add(id(module))

    def _batch_norm_across_ranks(self, stage: str, per_rank: int) -> None:
        """``train.sync_bn``: BatchNorm over the global batch (its modules become SyncBatchNorm,
        same parameters and buffers); else say that each process normalises its own share."""
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.method.modules())
        if not has_bn:
            return
        if self.cfg.train.sync_bn:
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        elif self.dist.is_main:
            log.warning(
                "stage %s: BatchNorm statistics are computed per process (%d images each of %d processes); "
                "the official CIFAR recipes train on one GPU (a batch of 128 per BatchNorm): run them on one "
                "GPU, or set train.sync_bn=true to normalise over the whole batch",
                stage,
                per_rank,
                self.dist.world_size,
            )

    def _train_epoch(self, s: int, epoch: int, model, loader, first: int, rank_images: int, lr: float, scfg) -> dict:
        name = self.stage_names[s]
        accum = scfg.accum_steps
        n_batches = len(loader)
        steps_per_epoch = math.ceil(n_batches / accum)
        schedule = make_schedule(scfg.schedule, lr, steps_per_epoch, scfg.epochs, n_batches, accum)
        self.method.set_train_mode(name)
        trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        world = self.dist.world_size
        bar = EpochProgress(
            f"{name} {epoch + 1}/{scfg.epochs}",
            rank_images * world,
            min(first * loader_batch(loader), rank_images) * world,
            self.progress,
            self.cfg.train.progress_every,
            self._epochs_after(s, epoch),
        )
        if first == 0:  # running loss terms of the epoch; restored from the checkpoint mid-epoch
            self.state.epoch_loss = {"sums": {}, "images": 0}
        rho = sam_rho(scfg.optim, epoch)
        sam = SharpnessAware(self.optimizer) if rho > 0 else None
        t0 = time.monotonic()
        seen = 0
        shown: dict[str, float] = {}
        for b, batch in enumerate(loader, start=first):
            if self.channels_last:
                batch = in_channels_last(batch)
            step = epoch * steps_per_epoch + b // accum
            if b % accum == 0:
                current_lr = schedule(step)
                for group in self.optimizer.param_groups:
                    group["lr"] = current_lr * group.get("lr_scale", 1.0)
            ctx = StepContext(name, epoch + 1, scfg.epochs, step, steps_per_epoch)
            sync = (b + 1) % accum == 0 or b + 1 == n_batches
            no_sync = model.no_sync() if (self.dist.enabled and not sync) else contextlib.nullcontext()

            # the closure SAM calls a second time at the perturbed weights
            forward_backward = functools.partial(self._forward_backward, model, batch, ctx, accum)
            where = f"stage {name!r}, epoch {epoch + 1}, step {b + 1}"
            with no_sync:
                terms = forward_backward(where)
            sums = self.state.epoch_loss["sums"]  # on the device until a checkpoint or the epoch's end
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.float() * len(batch)
            self.state.epoch_loss["images"] += len(batch)
            self.step_log.add(terms)
            if sync:
                if sam is not None:
                    self._sam_second_pass(sam, rho, forward_backward, where)
                if scfg.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, scfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.position = Position(s, epoch, b + 1)
                if self.step_log.step(name, epoch + 1, step + 1, current_lr):  # step + 1: 1-based in the stage
                    self.state.step_rows += 1
                if (step + 1) % self.flag_every == 0:  # every rank, at the steps where the log reads the device
                    self._check_finite()
                    shown = self._epoch_means()  # the progress shows the epoch's terms as of the last read
                self._maybe_checkpoint(step + 1)
            seen += len(batch)
            bar.update(len(batch) * world, shown)
        bar.close()
        self._check_finite()
        seconds = time.monotonic() - t0
        return {
            "terms": self._epoch_means(),
            "images": seen * self.dist.world_size,
            "seconds": seconds,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _forward_backward(self, model, batch, ctx: StepContext, accum: int, where: str) -> dict[str, torch.Tensor]:
        """One forward and backward pass of the method's loss on a batch; returns every loss term,
        detached, on the device (read back only every ``train.log_every`` steps). A non-finite
        loss is noted under ``where`` and raised at the next check (:class:`FiniteWatch`)."""
        with self.autocast():
            out = model(batch, ctx)
        terms = {k: torch.as_tensor(v).detach() for k, v in out.items()}
        self.finite.add(terms["loss"], where)
        self.scaler.scale(out["loss"] / accum).backward()
        return terms

    def _check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` when a loss since the last check was not finite
        (decided over every rank: they all stop together)."""
        bad = self.finite.read()
        if any_rank([bad is not None], self.dist, self.device)[0]:
            where, value = bad or ("another rank", math.nan)
            kept = (
                f"the last good checkpoint ({self.run.checkpoint}) is kept"
                if self.run.checkpoint.exists()
                else "no checkpoint had been written yet"
            )
            raise NonFiniteLossError(
                f"loss is {value} in {where}; training stopped and {kept}. Lower the learning rate, "
                "enable gradient clipping (grad_clip) or check the data."
            )

    def _epoch_means(self) -> dict[str, float]:
        """The epoch's image-weighted mean of every loss term so far (a read-back)."""
        images = max(self.state.epoch_loss["images"], 1)
        return {k: v / images for k, v in to_host(self.state.epoch_loss["sums"]).items()}

    def _sam_second_pass(self, sam: SharpnessAware, rho: float, forward_backward, where: str) -> None:
        """SAM: unscale the gradient at w once (AMP), climb to w + e(w), zero the gradient, run
        the loss again there (its backward is scaled as usual and unscaled once more by the
        scaler's step), and come back to w. When the gradient at w is not finite under AMP the
        climb is zero and the second gradient is made non-finite, so that GradScaler skips the
        step and backs off the loss scale, as it does without SAM; nothing is read back."""
        # the scale as a device tensor: GradScaler.scale multiplies by it (get_scale() would sync)
        inv_scale = self.scaler.scale(torch.ones((), device=self.device)).reciprocal() if self.amp else None
        found_inf = sam.ascend(rho, inv_scale)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            forward_backward(f"{where} (SAM's second pass)")
        finally:
            sam.restore()
        if found_inf is not None:
            grad = next(p.grad for p in sam.params if p.grad is not None)
            grad.add_(torch.where(found_inf > 0, math.inf, 0.0).to(grad.dtype))

    def _end_epoch(self, s: int, epoch: int, stats: dict) -> None:
        name = self.stage_names[s]
        scfg = self.cfg.stages[name]
        every = self.cfg.eval.every
        due = epoch + 1 == scfg.epochs or (every > 0 and (epoch + 1) % every == 0)
        terms = stats["terms"]
        line = f"{name} epoch {epoch + 1}/{scfg.epochs}: loss {terms.get('loss', math.nan):.4f}"
        if len(terms) > 1:
            line += " (" + ", ".join(f"{k} {v:.4f}" for k, v in terms.items() if k != "loss") + ")"
        if stats["seconds"] > 0 and stats["images"]:
            line += f", {stats['images'] / stats['seconds']:.0f} img/s, {stats['seconds']:.1f} s"
        remaining = (scfg.epochs - epoch - 1) * stats["seconds"]
        if remaining > 0:
            line += f", stage ETA {_fmt_duration(remaining)}"
        # later stages (and a run waiting for this one) see as many images per epoch: estimated at
        # this epoch's speed
        later = self._epochs_after(s, epoch) * stats["seconds"] - remaining
        if later > 0:
            line += f", run ETA ~{_fmt_duration(remaining + later)}"
            if self.waiting_epochs:
                line += f" (with the {self.waiting_epochs} epochs of the run waiting for this one)"
        if due and self.data.val is not None and self.method.evaluates_after(name):
            result = self._evaluate("val")
            acc = summarize(
                result["heads"]["main"]["correct"],
                result["heads"]["main"]["total"],
                self.data.train_counts,
                self.cfg.eval.shot_rule,
            )
            line += f" | val top-1 {acc['overall']:.2f}"
            self._write_metrics(
                {
                    "stage": name,
                    "stage_index": s,
                    "epoch": epoch + 1,
                    "split": "val",
                    "train_loss": terms.get("loss", math.nan),
                    "train_terms": terms,  # every scalar train_step returned, averaged over the epoch
                    "lr": stats["lr"],
                    "overall": acc["overall"],
                    "balanced": acc["balanced"],
                    **result,
                }
            )
            if self.cfg.eval.selection == "best-val" and (
                self.state.best is None or acc["overall"] > self.state.best["score"]
            ):
                self.state.best = {"stage": name, "epoch": epoch + 1, "score": acc["overall"]}
                if self.dist.is_main:
                    atomic_torch_save(self.method.state_dict(), self.run.best)
        if self.dist.is_main:  # the console shows it unless --quiet; the run's log.txt always keeps it
            log.info(line)
        self.state.position = Position(s, epoch + 1, 0)
        # a checkpoint at the stage's end (where the next stage's enter_stage is replayed from), else
        # only when train.checkpoint_minutes have passed: not one per epoch of a short epoch
        last = epoch + 1 == scfg.epochs
        if last or any_rank([self._time_due()], self.dist, self.device)[0]:
            self._save()

    def _epochs_after(self, s: int, epoch: int) -> int:
        """Epochs still to train after 0-based ``epoch`` of stage ``s``: the rest of the stage, the
        later stages, and those of a run that waits for this one (a student whose teacher this is)."""
        rest = self.cfg.stages[self.stage_names[s]].epochs - epoch - 1
        later = sum(self.cfg.stages[n].epochs for n in self.stage_names[s + 1 :])
        return rest + later + self.waiting_epochs

    # ------------------------------------------------------------------------- evaluation
    def _eval_batches(self, split_name: str):
        split = self.data.split(split_name)
        recipe = build_recipes([self.cfg.eval.augment], self.data, train=False)[0]
        order = shard(torch.arange(len(split)), self.dist.rank, self.dist.world_size, pad=False)
        bs = self.cfg.eval.batch_size
        if isinstance(split, TensorSplit) and recipe.batch is not None:
            return InMemoryLoader(split, order, bs, [recipe.batch], self.device, seed=0)
        if split_name not in self._eval_loaders:  # one worker pool per split for the whole run
            workers, decode = self.cfg.data.workers, self.cfg.data.decode
            self._eval_loaders[split_name] = WorkerLoader(
                split, bs, [recipe.sample], self.device, workers, decode=decode
            )
        return self._eval_loaders[split_name].epoch(order, 0)

    def _evaluate(self, split_name: str) -> dict:
        broadcast_buffers(self.method, self.dist)  # every rank scores its shard with the checkpoint's model
        batches = self._eval_batches(split_name)
        return evaluate(
            self.method,
            map(in_channels_last, batches) if self.channels_last else batches,
            self.data.num_classes,
            self.dist,
            self.cfg.eval.ece_bins,
            autocast(self.eval_precision, self.device),
        )

    def _write_metrics(self, entry: dict) -> None:
        if self.dist.is_main:
            self.run.append_metrics(entry)

    # ------------------------------------------------------------------------- checkpoints
    def _time_due(self) -> bool:
        return time.monotonic() - self._last_save >= self.cfg.train.checkpoint_minutes * 60

    def _maybe_checkpoint(self, step: int) -> None:
        """After optimizer step ``step`` (1-based in the stage): checkpoint when
        ``train.checkpoint_steps`` says so, when ``train.checkpoint_minutes`` have passed, or on a
        stop request (then stop). Under DDP saving is collective: every rank saves (and stops)
        when any rank's clock or signal says so, which costs an all-reduce read back on the host,
        so the clock and the signal are looked at every ``flag_every`` steps only."""
        tc = self.cfg.train
        by_steps = tc.checkpoint_steps > 0 and step % tc.checkpoint_steps == 0
        due, stop = self._time_due(), self.stop_requested
        if self.dist.enabled:
            due, stop = any_rank([due, stop], self.dist, self.device) if step % self.flag_every == 0 else (False, False)
        if by_steps or due or stop:
            self._save()
        if stop:
            raise TrainingInterrupted(f"stopped at {self.state.position} after a checkpoint")

    def _save(self) -> None:
        self._check_finite()  # a non-finite loss since the last check never reaches a checkpoint
        self.state.epoch_loss["sums"] = to_host(self.state.epoch_loss["sums"])
        self.state.step_pending = {"sums": to_host(self.step_log.sums), "count": self.step_log.count}
        now = time.monotonic()
        stage = self.stage_names[min(self.state.position.stage, len(self.stage_names) - 1)]
        self.state.wall[stage] += now - self._mark
        self._mark = self._last_save = now
        rngs = gather_objects(rng_state(self.device), self.dist)
        if self.dist.is_main:
            atomic_torch_save(
                {
                    "state": asdict(self.state),
                    "model": self.method.state_dict(),
                    "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                    "scaler": self.scaler.state_dict(),
                    "rng": rngs,
                    "run_id": self.cfg.run_id(),
                    "cpu_threads": torch.get_num_threads(),
                },
                self.run.checkpoint,
            )
        barrier(self.dist)

    def _restore(self) -> int:
        """Load the checkpoint if there is one; returns how many stages it has entered."""
        self._pending_optimizer_state = None
        if not self.run.checkpoint.exists():
            if self.dist.is_main:  # a run restarted without a checkpoint redoes everything: no line twice
                self.step_log.truncate(0)
                if self.run.metrics.exists():
                    self.run.keep_metrics(lambda e: False)
            return 0
        try:
            state = load_checkpoint(self.run.checkpoint)
        except Exception as err:  # checkpoints are written atomically: this file was damaged elsewhere
            raise LTBenchError(
                f"cannot read {self.run.checkpoint} ({type(err).__name__}: {err}); restore it from a "
                "backup, or delete it to train this run again from the start"
            ) from None
        self.state = TrainState.from_dict(state["state"])
        self.state.resumes += 1
        for name in self.stage_names[: self.state.position.stage + 1]:
            self.method.enter_stage(name)
        self.method.load_state_dict(state["model"])
        self._pending_optimizer_state = (
            state["optimizer"] if self.state.position.epoch or self.state.position.batch else None
        )
        if state["scaler"]:  # empty when written with loss scaling off (fp32, bf16, or on a laptop)
            self.scaler.load_state_dict(state["scaler"])
        self._warn_thread_change(state.get("cpu_threads"))
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0], self.device)
        if self.dist.is_main:
            self.step_log.truncate(self.state.step_rows)
            self.step_log.sums, self.step_log.count = (
                dict(self.state.step_pending["sums"]),
                self.state.step_pending["count"],
            )
        pos = self.state.position
        if self.dist.is_main:  # drop evaluations made after this checkpoint: they are redone
            self.run.keep_metrics(
                lambda e: (
                    not e.get("final")
                    and (e["stage_index"] < pos.stage or (e["stage_index"] == pos.stage and e["epoch"] <= pos.epoch))
                )
            )
        log.info("resuming %s %s", self.run.path, self._where(pos))
        return pos.stage + 1

    def _warn_thread_change(self, saved: int | None) -> None:
        """A CPU run resumed with another thread count continues on other floating-point sums (the
        kernels split their reductions by thread), so it cannot end as the uninterrupted run would."""
        now = torch.get_num_threads()
        if self.device.type == "cpu" and saved is not None and saved != now and self.dist.is_main:
            log.warning(
                "%s was checkpointed by a process with %d CPU threads and resumes with %d: the resumed run "
                "will not end with the metrics of an uninterrupted one; set OMP_NUM_THREADS=%d to match it",
                self.run.path,
                saved,
                now,
                saved,
            )

    def _where(self, pos: Position) -> str:
        """Where a resumed run continues, in words (a checkpoint at a stage's end names no epoch beyond it)."""
        if pos.stage >= len(self.stage_names):
            return "after its last stage: evaluating"
        name = self.stage_names[pos.stage]
        epochs = self.cfg.stages[name].epochs
        if pos.epoch >= epochs:
            return f"after stage {name} (its {epochs} epochs are done)"
        return f"at stage {name}, epoch {pos.epoch + 1}, batch {pos.batch} (of {epochs} epochs)"

    # ------------------------------------------------------------------------- final record
    def _finish(self, chosen_on_val: dict | None = None) -> dict:
        selection = {"policy": self.cfg.eval.selection}
        if self.cfg.eval.selection == "best-val" and self.state.best is not None:
            self.method.load_state_dict(torch.load(self.run.best, map_location=self.device))
            selection.update(
                stage=self.state.best["stage"], epoch=self.state.best["epoch"], val_overall=self.state.best["score"]
            )
        else:
            # a method without stages (tau-normalisation: post-hoc on another run) has none to name
            last = next((s for s in reversed(self.stage_names) if self.cfg.stages[s].epochs > 0), None)
            last = last or (self.stage_names[-1] if self.stage_names else None)
            selection.update(stage=last, epoch=self.cfg.stages[last].epochs if last else 0)
        if chosen_on_val is not None:
            selection["chosen_on_val"] = chosen_on_val
        splits = {}
        for split_name in ("val", "test"):
            if split_name == "val" and self.data.val is None:
                continue
            result = self._evaluate(split_name)
            splits[split_name] = result
            self._write_metrics(
                {
                    "stage": selection["stage"],
                    "stage_index": len(self.stage_names),
                    "epoch": selection["epoch"],
                    "split": split_name,
                    "final": True,
                    **result,
                }
            )
        record = {
            "schema": RECORD_SCHEMA,
            "run_id": self.cfg.run_id(),
            "variant": self.cfg.variant_id(),
            "method": self.cfg.method_name,
            "dataset": self.cfg.dataset_name,
            "preset": self.cfg.preset,
            "seed": self.cfg.train.seed,
            "dataset_fingerprint": self.data.fingerprint,
            "dataset_details": self.data.details,
            "shot_rule": self.data.shot_rule,  # the dataset's default many/medium/few rule
            "changes": preset_changes(self.cfg),  # what this variant changes with respect to its preset
            "num_classes": self.data.num_classes,
            "train_counts": self.data.train_counts.tolist(),
            "class_names": self.data.class_names,
            "selection": selection,
            "splits": splits,
            "teachers": self.teachers,
            "config": self.cfg.to_dict(),
            "versions": versions(),
            "git_sha": git_sha(),
            "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "world_size": self.dist.world_size,
            # CPU kernels split their sums by thread: a CPU run's metrics depend on this count (ce cpu,
            # seed 0: 70.82 with 1 thread, 72.22 with 2 on this project's machine)
            "cpu_threads": torch.get_num_threads(),
            # train.precision / eval.precision as resolved on this device, and TF32 as set
            "precision": {"train": self.precision, "eval": self.eval_precision, **tf32_settings()},
            "wall_time": {**self.state.wall, "total": sum(self.state.wall.values())},
            "compute": compute_record(
                self.method, {s: c.epochs for s, c in self.cfg.stages.items()}, self.device, self._eval_batches("test")
            ),
            "resumes": self.state.resumes,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if self.dist.is_main:
            atomic_write_json(self.run.record, record)
        barrier(self.dist)
        return record
