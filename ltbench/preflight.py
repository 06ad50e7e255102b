"""Checks made before training starts, so that nothing the run will read fails hours into it.

- every image listed in every split the run reads exists (a ``stat`` per file, in threads: cheap
  next to decoding; a missing test image would otherwise surface only after training), and the
  run is bound to the images' content (:func:`check_files`): every file's size and the bytes of a
  deterministic sample of files (in-memory datasets: every pixel), never the root they are read
  from, so that a copy of the data on another disk matches and changed images do not;
- ``eval.selection=best-val`` has a val split to select on; a class without test images is said;
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
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .augment import Recipe, build_recipes
from .config import Config
from .data import CorruptImageError, FileSplit, LTData, Split, TensorSplit
from .errors import ConfigError, DataError

log = logging.getLogger("ltbench")

SHOWN = 5  # missing files named in the error
#: image files whose bytes go into the content digest (chosen by a hash of their relative path):
#: with every file's size, a changed image is found unless it keeps its size and is not sampled
CONTENT_SAMPLE = 256


def file_sizes(split: FileSplit, workers: int = 16) -> list[int]:
    """The size in bytes of every listed image; -1 where there is no such file."""

    def size(relpath: str) -> int:
        try:
            st = os.stat(split.root / relpath)
        except OSError:
            return -1
        return st.st_size if stat.S_ISREG(st.st_mode) else -1

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(size, split.paths, chunksize=256))


def _sampled(relpaths: set[str]) -> list[str]:
    """``CONTENT_SAMPLE`` of the relative paths, the same ones wherever the data lives (no dependence
    on the root)."""
    return sorted(relpaths, key=lambda p: hashlib.blake2b(p.encode(), digest_size=8).digest())[:CONTENT_SAMPLE]


def check_files(data: LTData, dataset: str) -> str:
    """Every listed image of every split exists (else one error naming the first few); returns
    the digest of the images' content (see the module docstring), recorded with the run."""
    digest = hashlib.sha256()
    missing: list[str] = []
    roots: dict[str, FileSplit] = {}
    for name, split in _splits(data).items():
        digest.update(name.encode())
        if isinstance(split, TensorSplit):
            digest.update(split.images.contiguous().numpy().tobytes())
            continue
        if not isinstance(split, FileSplit):
            continue
        sizes = file_sizes(split)
        missing += [f"{split.root / split.paths[i]} ({split.where(i)})" for i, n in enumerate(sizes) if n < 0]
        digest.update(np.asarray(sizes, dtype=np.int64).tobytes())
        roots.update(dict.fromkeys(split.paths, split))
    if missing:
        more = f", and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise DataError(
            f"{len(missing)} listed images do not exist: {'; '.join(missing[:SHOWN])}{more}. Check --root, or run "
            f"`ltbench data verify --dataset {dataset} --root DIR` to list them all"
        )
    for relpath in _sampled(set(roots)):
        digest.update(relpath.encode())
        digest.update((roots[relpath].root / relpath).read_bytes())
    return digest.hexdigest()[:16]


def check_selection(cfg: Config, has_val: bool) -> None:
    """Best-val selection needs a val split to select on."""
    if cfg.eval.selection == "best-val" and not has_val:
        raise ConfigError(
            f"eval.selection=best-val needs a val split, and {cfg.dataset_name} has none with these settings; "
            "use eval.selection=last, or give the dataset a val split (a val file, or data.val_per_class=N "
            "where the dataset draws one)"
        )


def empty_test_classes(num_classes: int, test_labels: np.ndarray | None, split: str = "test") -> str:
    """A warning when some classes have no test image ("" when every class has one): their
    accuracy is undefined, and balanced accuracy and the shot groups average over the others."""
    if test_labels is None:
        return ""
    empty = np.flatnonzero(np.bincount(np.asarray(test_labels, dtype=np.int64), minlength=num_classes) == 0)
    if not len(empty):
        return ""
    shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
    return (
        f"{len(empty)} of {num_classes} classes have no {split} image (classes {shown}): their {split} accuracy is "
        f"undefined, and balanced accuracy and many/medium/few average over the other {num_classes - len(empty)} "
        f"classes only; add {split} images for them to compare with results over all classes"
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
            f"{what} does not fit this data: {type(err).__name__}: {str(err).rstrip('.')}. The images are worked at "
            f"{data.image_size} px (data.image_size); choose a recipe made for images of this size, or set "
            "data.image_size"
        ) from None
    size = tuple(out.shape[-2:])
    if isinstance(split, TensorSplit) and size != (data.image_size, data.image_size):
        stored = split.images.shape[-1]
        raise ConfigError(
            f"{what} gives the {_name(data, split)} images at {size[0]}x{size[1]} px, but the run works at "
            f"{data.image_size} px (data.image_size; the stored images have {stored} px): every split must be seen "
            "at the working size. Choose recipes that resize to it (e.g. stages.*.augment=rrc_flip and "
            f"eval.augment=resize_center_crop), or leave data.image_size at 0 for the stored {stored} px"
        )
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
    """What can be checked before training besides the files (:func:`check_files`, which the
    runner calls first, to compare the content with the run's): see the module docstring."""
    check_selection(cfg, data.val is not None)
    check_recipes(cfg, data)
    warning = empty_test_classes(data.num_classes, data.test.labels)
    if warning:
        log.warning("%s", warning)


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
