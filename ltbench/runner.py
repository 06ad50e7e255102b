"""Run one configuration to completion in its run directory: the entry point shared by the CLI,
the local launcher and Slurm jobs.

The run directory is derived from the run id, so the same command always finds the same run:
a finished run is reported and left alone, an unfinished one resumes from its checkpoint. A run
directory is bound to the data it trains on (``data.json``, the dataset fingerprint): when the data
has changed since (a fixed split file, another ``--root``), the old results are never returned as
this data's: the run is refused, or with ``force`` set aside and trained again.
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
from .errors import ConfigError, LTBenchError
from .method import DataInfo, Method
from .preflight import ImageWatch, preflight
from .records import RunDir, atomic_write_json, results_root
from .registry import DATASETS, METHODS, load_plugins
from .trainer import Trainer, TrainingInterrupted, seed_everything

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
    """Copy the log to ``path``; an error that ends the run is written there too (only there: the
    CLI prints it), so that ``ltbench status`` can say why the run stopped."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    except Exception as err:
        if not isinstance(err, TrainingInterrupted):  # a stop request is no failure
            text = " | ".join(str(err).splitlines())
            handler.handle(
                log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s: %s", (type(err).__name__, text), None)
            )
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


class StaleRunError(LTBenchError):
    """The run directory holds a run of this config trained on other data."""


def _data_identity(data: LTData) -> dict:
    return {"fingerprint": data.fingerprint, "root": data.details.get("root", "")}


def check_data(run: RunDir, data: LTData) -> None:
    """Refuse a run directory whose run (finished, or with a checkpoint) was trained on other data."""
    if not run.is_done() and not run.checkpoint.exists():
        return  # nothing trained yet: the run starts on this data
    stored = run.read_record() if run.is_done() else run.read_data()
    if stored is None:
        return
    old = stored.get("dataset_fingerprint") or stored.get("fingerprint")
    if old == data.fingerprint:
        return
    old_root = (stored.get("dataset_details") or stored).get("root") or ""
    new_root = data.details.get("root") or ""
    raise StaleRunError(
        f"{run.path} holds this configuration trained on other data: dataset fingerprint {old}"
        + (f" (root {old_root})" if old_root else "")
        + f", but the data now has fingerprint {data.fingerprint}"
        + (f" (root {new_root})" if new_root else "")
        + ". Its results are not this data's. To train on this data, pass --force (the old run is "
        "moved to superseded/ in that directory, nothing is deleted) or --out DIR for another results directory"
    )


def _write_config(run: RunDir, cfg: Config, data: LTData) -> None:
    if not run.config.exists():  # the directory name is the run id: an existing file is this config
        atomic_write_json(run.config, cfg.to_dict())
    if (run.read_data() or {}).get("fingerprint") != data.fingerprint:  # new, or nothing trained yet
        atomic_write_json(run.data, _data_identity(data))


def train(
    cfg: Config,
    results: str | Path | None = None,
    progress: bool = True,
    dist: DistInfo = DistInfo(),
    on_trainer: Callable[[Trainer], None] | None = None,
    force: bool = False,
) -> RunResult:
    """Train ``cfg`` (or resume it, or report it finished). ``on_trainer`` sees the trainer before
    training starts (the Slurm job uses it to route preemption signals to ``request_stop``).
    ``force``: set aside what the run directory holds (finished or not) and train from the start."""
    run = run_dir_for(cfg, results)
    device = resolve_device(cfg.train.device, dist)
    data = build_data(cfg)  # before the run directory exists: bad data leaves nothing behind
    if not force:
        check_data(run, data)
        if run.is_done():
            return RunResult(run, run.read_record(), already_done=True)
    preflight(cfg, data)  # every listed file, and the recipes on the first images: before training
    if force and dist.is_main and run.path.is_dir():
        with run.lock():
            moved = run.set_aside()
        if moved:
            log.info("--force: the previous contents of %s were moved to %s", run.path, moved)
    lock = run.lock() if dist.is_main else contextlib.nullcontext()
    with lock, _log_to(run.log, dist.is_main):
        if dist.is_main:
            _write_config(run, cfg, data)
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
        with ImageWatch(data, dist.is_main).watching(trainer):  # val/test images decoded meanwhile
            record = trainer.fit()
    return RunResult(run, record, already_done=False)
