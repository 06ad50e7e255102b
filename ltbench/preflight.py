"""Checks made before training starts, so that nothing the run will read fails hours into it.

- every image listed in every split the run reads exists (a ``stat`` per file, in threads: cheap
  next to decoding; a missing test image would otherwise surface only after training);
- the first image of each split decodes, and goes through the recipes that will see it: each
  stage's training views and the evaluation recipe. A recipe that does not fit the data (a CIFAR
  crop on large images, a recipe that keeps each file's own size) is a configuration error here,
  not a torchvision traceback mid-run;
- while training runs, :class:`ImageWatch` decodes every val and test image in a background thread:
  a corrupt one stops the run at the next optimizer step, after a checkpoint, instead of after the
  whole training (training images are decoded by the first epoch anyway).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from .augment import Recipe, build_recipes
from .config import Config
from .data import CorruptImageError, FileSplit, LTData, Split, TensorSplit
from .errors import ConfigError, DataError

log = logging.getLogger("ltbench")

SHOWN = 5  # missing files named in the error


def missing_files(split: FileSplit, workers: int = 16) -> list[int]:
    """Indices of the listed images that do not exist."""
    with ThreadPoolExecutor(workers) as pool:
        exists = list(pool.map(lambda p: os.path.isfile(split.root / p), split.paths, chunksize=256))
    return [i for i, ok in enumerate(exists) if not ok]


def check_files(data: LTData, dataset: str) -> None:
    """Every listed image of every split exists; else one error naming the first few."""
    missing = []
    for split in _splits(data).values():
        if isinstance(split, FileSplit):
            missing += [f"{split.root / split.paths[i]} ({split.where(i)})" for i in missing_files(split)]
    if missing:
        more = f", and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise DataError(
            f"{len(missing)} listed images do not exist: {'; '.join(missing[:SHOWN])}{more}. Check --root, or run "
            f"`ltbench data verify --dataset {dataset} --root DIR` to list them all"
        )


def _first_image(split: Split):
    """The first decodable image of a split (None if none decodes and unreadable ones are skipped)."""
    if isinstance(split, TensorSplit):
        return split.load(0)
    for i in range(len(split)):
        try:
            return split.load(i)
        except CorruptImageError:
            if not getattr(split, "skip_corrupt", False):
                raise
    return None


def _try(recipe: Recipe, image, data: LTData, what: str, split: Split) -> None:
    """Apply ``recipe`` as training or evaluation will: a batch of the first two in-memory images
    through its batch form, else the first image through its per-image form."""
    if image is None:
        return
    try:
        if isinstance(split, TensorSplit) and recipe.batch is not None:
            out = recipe.batch(split.images[:2], torch.Generator().manual_seed(0))
        else:
            out = recipe.sample(image)
    except Exception as err:  # any failure of a third-party transform: say which setting causes it
        raise ConfigError(
            f"{what} does not fit this data: {type(err).__name__}: {err}. The images are worked at "
            f"{data.image_size} px (data.image_size); choose a recipe made for images of this size, or set "
            "data.image_size"
        ) from None
    size = tuple(out.shape[-2:])
    if isinstance(split, FileSplit) and size != (data.image_size, data.image_size):
        raise ConfigError(
            f"{what} turns the first {_name(data, split)} image into {size[0]}x{size[1]} px, not the "
            f"{data.image_size} px the run works at (data.image_size): images of other sizes could not be "
            "batched together. Choose a recipe that resizes or crops (e.g. rrc_flip, resize_center_crop)"
        )


def _splits(data: LTData) -> dict[str, Split]:
    return {n: s for n, s in (("train", data.train), ("val", data.val), ("test", data.test)) if s is not None}


def _name(data: LTData, split: Split) -> str:
    return next(n for n, s in _splits(data).items() if s is split)


def check_recipes(cfg: Config, data: LTData) -> None:
    """The first image of each split through every recipe that will see it."""
    splits = _splits(data)
    first = {name: _first_image(split) for name, split in splits.items()}
    for stage, scfg in cfg.stages.items():
        if scfg.epochs == 0:
            continue
        for name, recipe in zip(scfg.augment, build_recipes(scfg.augment, data, train=True)):
            if recipe.sample is None and not isinstance(data.train, TensorSplit):
                continue  # the trainer says that a batch-only recipe needs an in-memory dataset
            _try(recipe, first["train"], data, f"stages.{stage}.augment={name}", data.train)
    recipe = build_recipes([cfg.eval.augment], data, train=False)[0]
    for name in ("val", "test"):
        if name in splits:
            _try(recipe, first[name], data, f"eval.augment={cfg.eval.augment} (on {name})", splits[name])


def preflight(cfg: Config, data: LTData) -> None:
    """Everything that can be checked before training (see the module docstring)."""
    check_files(data, cfg.dataset_name)
    check_recipes(cfg, data)


class ImageWatch:
    """Decodes every val/test image in a background thread during training; the first that cannot
    be decoded asks the trainer to stop (it checkpoints first) and :meth:`watching` raises it."""

    def __init__(self, data: LTData, enabled: bool = True) -> None:
        """``enabled``: one process of a DDP job watches (the stop it asks for is collective)."""
        files = [s for s in (data.val, data.test) if isinstance(s, FileSplit)]
        self.splits = [s for s in files if enabled and not s.skip_corrupt]
        self.error: DataError | None = None
        self.trainer = None
        self.done = threading.Event()

    def _run(self) -> None:
        for split in self.splits:
            for i in range(len(split)):
                if self.done.is_set():
                    return
                try:
                    split.load(i)
                except DataError as err:
                    self.error = err
                    log.warning("%s; stopping the run after a checkpoint", err)
                    self.trainer.request_stop()
                    return

    @contextlib.contextmanager
    def watching(self, trainer) -> Iterator[None]:
        """Watch while the block trains with ``trainer``; a stop the watch asked for becomes its error."""
        self.trainer = trainer
        thread = threading.Thread(target=self._run, name="ltbench-image-watch", daemon=True)
        if self.splits:
            thread.start()
        try:
            yield
        except Exception:
            if self.error is not None:  # the stop we asked for (TrainingInterrupted): say why instead
                raise DataError(
                    f"{self.error} (found while training; the run stopped after a checkpoint and resumes "
                    "from it once the image is repaired)"
                ) from None
            raise
        finally:
            self.done.set()
