"""Run one configuration to completion in its run directory: the entry point shared by the CLI,
the local launcher and Slurm jobs.

The run directory is derived from the run id, so the same command always finds the same run:
a finished run is reported and left alone, an unfinished one resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config
from .data import LTData
from .distributed import DistInfo
from .errors import ConfigError
from .method import DataInfo, Method
from .records import RunDir, atomic_write_json, results_root
from .registry import DATASETS, METHODS, load_plugins
from .trainer import Trainer, seed_everything

log = logging.getLogger("ltbench")


@dataclass
class RunResult:
    run: RunDir
    record: dict
    already_done: bool


def run_dir_for(cfg: Config, results: str | Path | None = None) -> RunDir:
    return RunDir.of(results_root(results), cfg.dataset_name, cfg.method_name, cfg.run_id())


def resolve_device(name: str, dist: DistInfo = DistInfo()) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device


def build_data(cfg: Config) -> LTData:
    load_plugins()
    data = DATASETS.get(cfg.dataset_name)().build(cfg.data)
    if cfg.data.image_size > 0:  # a preset's working resolution (e.g. CIFAR at 224 for a ViT)
        data.image_size = cfg.data.image_size
    return data


def build_method(cfg: Config, data: LTData) -> Method:
    load_plugins()
    return METHODS.get(cfg.method_name)(cfg, DataInfo.of(data))


@contextlib.contextmanager
def _log_to(path: Path, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def _write_config(run: RunDir, cfg: Config) -> None:
    if not run.config.exists():  # the directory name is the run id: an existing file is this config
        atomic_write_json(run.config, cfg.to_dict())


def train(
    cfg: Config,
    results: str | Path | None = None,
    progress: bool = True,
    dist: DistInfo = DistInfo(),
    on_trainer: Callable[[Trainer], None] | None = None,
) -> RunResult:
    """Train ``cfg`` (or resume it, or report it finished). ``on_trainer`` sees the trainer before
    training starts (the Slurm job uses it to route preemption signals to ``request_stop``)."""
    run = run_dir_for(cfg, results)
    if run.is_done():
        return RunResult(run, run.read_record(), already_done=True)
    device = resolve_device(cfg.train.device, dist)
    data = build_data(cfg)  # before the run directory exists: bad data leaves nothing behind
    lock = run.lock() if dist.is_main else contextlib.nullcontext()
    with lock, _log_to(run.log, dist.is_main):
        if dist.is_main:
            _write_config(run, cfg)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = cfg.train.deterministic
            torch.backends.cudnn.benchmark = not cfg.train.deterministic
        seed_everything(cfg.train.seed + dist.rank)  # as the official DDP codes: masks, Mixup differ per rank
        method = build_method(cfg, data).to(device)
        log.info(
            "run %s: %s on %s (preset %s, seed %d) -> %s",
            cfg.run_id(),
            cfg.method_name,
            cfg.dataset_name,
            cfg.preset,
            cfg.train.seed,
            run.path,
        )
        trainer = Trainer(cfg, data, method, run, device, dist, progress)
        if on_trainer is not None:
            on_trainer(trainer)
        record = trainer.fit()
    return RunResult(run, record, already_done=False)
