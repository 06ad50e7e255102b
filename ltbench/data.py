"""Dataset containers, samplers and the two data paths of the trainer.

Small datasets (Fashion-MNIST, CIFAR, synthetic) live in memory as uint8 tensors and are augmented
a whole batch at a time on the training device: no worker processes, no per-image Python (a recipe
with no whole-batch form, e.g. ``autoaug_cutout``, runs image by image, in workers on CUDA). Image-file
datasets (ImageNet-LT, Places-LT, iNaturalist, folder_lt) decode with PIL in DataLoader workers, by
default as many as the CPUs of the job allow (:func:`loader_workers`), into pinned memory on CUDA.

Every random choice in the data path is a pure function of (train seed, stage, epoch, position):
the epoch's order comes from a generator seeded with the epoch seed, each in-memory batch is
augmented with a generator seeded from (epoch seed, batch index), and each decoded image with a
seed from (epoch seed, position). So a run resumed in the middle of an epoch sees exactly the
batches an uninterrupted run would have seen, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .config import DataConfig
from .distributed import slurm_cpus_per_task
from .errors import ConfigError, DataError
from .registry import Registry

log = logging.getLogger("ltbench")


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device`` without a host sync: a copy from pageable memory makes the host wait for
    the GPU's stream (CUDA stages it synchronously); one from pinned memory is queued on the stream."""
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (stable across Python runs and platforms)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(parts)}q", *parts), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def fingerprint(*arrays: np.ndarray | Sequence[str]) -> str:
    """A short content hash used as a dataset version (e.g. of the chosen subset indices)."""
    h = hashlib.sha256()
    for arr in arrays:
        if isinstance(arr, np.ndarray):
            h.update(np.ascontiguousarray(arr.astype(np.int64)).tobytes())
        else:
            h.update("\n".join(arr).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- splits


class Split(Protocol):
    """One split of a dataset: ``labels`` (int64 numpy) and ``load(i)`` of a single image."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def load(self, index: int): ...


@dataclass
class TensorSplit:
    """An in-memory split: uint8 images [N, C, H, W] and int64 labels."""

    images: Tensor
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self._labels_t = torch.from_numpy(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> Tensor:
        return self.images[index]

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.images[index], self._labels_t[index]


class CorruptImageError(DataError):
    """A listed image exists but cannot be decoded."""


@dataclass
class FileSplit:
    """A split listed in a ``relpath label`` file (or a json index): images decoded on demand.

    With ``skip_corrupt`` the worker loader leaves out images that fail to decode instead of
    stopping; ``skipped`` (relpath -> times skipped, filled in the main process; under DDP, each
    rank's own) is what the dataset exposes in ``LTData.details`` so that run.json records every
    skipped image.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray
    source: str = ""  # the split file the entries come from, for error messages
    lines: np.ndarray | None = None  # 1-based line numbers in ``source``
    skip_corrupt: bool = False
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, index: int) -> str:
        line = f", line {int(self.lines[index])}" if self.lines is not None else ""
        return f"{self.source}{line}" if self.source else "the split file"

    def load(self, index: int, draft: int = 0):
        """Image ``index`` as 8-bit RGB. ``draft`` > 0: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale
        (``Image.draft``, several times faster) as long as both sides stay at least ``draft`` px, for
        recipes that shrink the image to that size anyway."""
        from PIL import Image, UnidentifiedImageError

        path = self.root / self.paths[index]
        try:
            with Image.open(path) as img:
                if draft:
                    img.draft("RGB", (draft, draft))
                return to_rgb(img)
        except FileNotFoundError:
            raise DataError(
                f"image {path} listed in {self.where(index)} does not exist; check --root "
                f"(now {self.root}) or run `ltbench data verify` to list every missing file"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise CorruptImageError(
                f"image {path} listed in {self.where(index)} cannot be decoded ({err}); re-download it, "
                "or pass --set data.skip_corrupt=true to skip unreadable images (they are counted in run.json)"
            ) from None

    def note_skipped(self, index: int) -> None:
        path = self.paths[index]
        if path not in self.skipped:
            log.warning("skipped unreadable image %s (%s; data.skip_corrupt)", self.root / path, self.where(index))
        self.skipped[path] = self.skipped.get(path, 0) + 1

    def native_size(self) -> int:
        """The shorter side of the first listed image: the working size when none is configured."""
        image = self.load(0)
        return min(image.size)


def to_rgb(img):
    """A PIL image as 8-bit RGB. 16-bit and 32-bit integer images (16-bit PNGs open as mode I or
    I;16) are scaled from 0..65535 to 0..255; ``convert("RGB")`` would clip them to 0 or 255."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        wide = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray(((wide.astype(np.float64) * 255.0 / 65535.0).round()).clip(0, 255).astype(np.uint8))
    return img.convert("RGB")


@dataclass
class LTData:
    """A long-tailed dataset as the trainer sees it: splits plus what methods need to know."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split | None
    test: Split
    fingerprint: str
    class_names: list[str] | None = None
    train_augment: str = "pad_crop_flip"  # the dataset's default training recipe
    eval_augment: str = "normalize"  # the dataset's default evaluation recipe
    shot_rule: str = "strict"  # the dataset's default many/medium/few rule (its class's ``shot_rule``)
    details: dict = field(default_factory=dict)  # recorded in run.json (subset variant, class map, ...)

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train.labels, minlength=self.num_classes)

    def split(self, name: str) -> Split:
        split = {"train": self.train, "val": self.val, "test": self.test}[name]
        if split is None:
            raise DataError(f"dataset {self.name!r} has no {name} split")
        return split


@dataclass
class SplitLabels:
    """The labels of every split without the images: what ``ltbench data info`` counts."""

    num_classes: int
    train: np.ndarray
    val: np.ndarray | None
    test: np.ndarray | None
    fingerprint: str  # "" when it cannot be known without the data files
    note: str = ""  # where the labels come from, when not from the data files themselves

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train, minlength=self.num_classes)


@dataclass(frozen=True)
class PublishedStats:
    """A benchmark's statistics as the papers report them (``refs/protocol.md``), which
    ``ltbench data verify`` compares with the user's files."""

    classes: int
    train: int
    max: int
    min: int
    val: int | None = None
    test: int | None = None


@dataclass(frozen=True)
class RemoteFile:
    """A public file that ``ltbench data prepare`` downloads and checks."""

    url: str
    name: str  # file name inside the prepare directory
    checksum: str  # "md5:<hex>" (published archives) or "gitblob:<sha1>" (a file pinned at a git commit)
    unpack: bool = False  # a tar archive to unpack in the prepare directory
    provides: str = ""  # a path (relative to the prepare directory) that exists once this is in place


def data_home() -> Path:
    """Where downloaded datasets live by default: ``$LTBENCH_DATA``, else ``~/.cache/ltbench``."""
    return Path(os.environ.get("LTBENCH_DATA") or Path.home() / ".cache" / "ltbench")


class LTDataset:
    """Base class of registered datasets: ``Params`` is the ``data.*`` config section and
    ``build(params)`` reads the files and returns an :class:`LTData`.

    The other hooks serve ``ltbench data info|verify|prepare``; their defaults suit a dataset
    that has nothing to download and no published statistics.
    """

    Params: ClassVar[type] = DataConfig
    #: DeiT-LT's many/medium/few cut points over frequency-sorted classes (shot rule ``index:A,B``)
    index_cuts: ClassVar[tuple[int, int] | None] = None
    #: the shot rule ``ltbench report`` applies to this dataset unless ``--shot-rule`` names another
    shot_rule: ClassVar[str] = "strict"

    def build(self, params: DataConfig) -> LTData:
        raise NotImplementedError

    def split_labels(self, params: DataConfig) -> SplitLabels:
        """Labels of every split. The default builds the dataset; file datasets override it so
        that statistics need the split files only, never the images."""
        data = self.build(params)
        return SplitLabels(
            data.num_classes,
            data.train.labels,
            None if data.val is None else data.val.labels,
            data.test.labels,
            data.fingerprint,
        )

    def published(self, params: DataConfig) -> PublishedStats | None:
        """The statistics the papers report for this configuration, if any."""
        return None

    def check_integrity(self, params: DataConfig) -> list[str]:
        """Problems with the data files beyond the listed images (e.g. checksums); [] if none."""
        return []

    def prepare_dir(self, params: DataConfig) -> Path:
        """Where ``ltbench data prepare`` puts what it downloads."""
        if not params.root:
            raise ConfigError("--root DIR is required: the directory that holds (or will hold) the dataset")
        return Path(params.root)

    def downloads(self, params: DataConfig) -> list[RemoteFile]:
        """Public files ``ltbench data prepare`` can fetch."""
        return []

    def manual_steps(self, params: DataConfig) -> str:
        """What the user must obtain by hand (licensed images) and where to put it; "" if nothing."""
        return ""


def exponential_profile(img_max: int, imb_factor: float, num_classes: int) -> list[int]:
    """Per-class counts ``int(img_max * (1/IF)**(i/(C-1)))``, class 0 the largest (LDAM-DRW)."""
    return [int(img_max * (1.0 / imb_factor) ** (i / (num_classes - 1))) for i in range(num_classes)]


def long_tailed_subset(
    labels: np.ndarray, counts: Sequence[int], seed: int, variant: str = "shuffle", val_per_class: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a long-tailed training subset and of a validation set drawn from the
    remaining images, class by class in order.

    ``shuffle`` (LDAM-DRW, RIDE, MDCS, LiVT, DeiT-LT): ``np.random.seed(seed)`` once, then per
    class shuffle its indices and keep the first n_c. ``first`` (SHIKE): the first n_c indices of
    each class. Validation takes the next ``val_per_class`` indices of each class's (shuffled)
    list, so it never overlaps the subset and never changes it; a class with fewer spare images
    gives what it has (with CIFAR's img_max = all images of a class, class 0 gives none).
    """
    if variant not in ("shuffle", "first"):
        raise ConfigError(f"data.subset must be 'shuffle' or 'first', got {variant!r}")
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)  # the same stream as np.random.seed(seed) + np.random.shuffle
    train, val = [], []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if variant == "shuffle":
            rng.shuffle(idx)
        if n > len(idx):
            raise ConfigError(f"class {c} has {len(idx)} images, fewer than the {n} training images asked for")
        train.append(idx[:n])
        val.append(idx[n : n + val_per_class])
    return np.concatenate(train), np.concatenate(val)


# ----------------------------------------------------------------------------- samplers

# A sampler is called once per stage as ``sampler(labels, num_classes, epoch_generator)`` and yields
# one index order per epoch; ``epoch_generator(e)`` is epoch e's seeded generator. One iterator per
# stage lets a sampler carry state from epoch to epoch (as a PyTorch ``Sampler`` object does for the
# life of its loader); a resumed stage replays the epochs before it.
SAMPLERS: Registry = Registry("sampler")

EpochGenerator = Callable[[int], torch.Generator]


@SAMPLERS.register("instance")
def instance_sampler(labels: np.ndarray, num_classes: int, epoch_generator: EpochGenerator) -> Iterator[Tensor]:
    """Every training image once per epoch, in a random order."""
    for epoch in itertools.count():
        yield torch.randperm(len(labels), generator=epoch_generator(epoch))


@SAMPLERS.register("class_balanced")
def class_balanced_sampler(labels: np.ndarray, num_classes: int, epoch_generator: EpochGenerator) -> Iterator[Tensor]:
    """Pick a class uniformly, then the next image of that class's shuffled bucket, reshuffled
    when used up (RIDE's ``BalancedSampler``); an epoch has as many draws as the dataset has
    images, and the buckets and their positions carry over from one epoch to the next."""
    present = [c for c in range(num_classes) if np.any(labels == c)]
    gen = epoch_generator(0)
    buckets = {c: torch.from_numpy(np.flatnonzero(labels == c)) for c in present}
    buckets = {c: b[torch.randperm(len(b), generator=gen)] for c, b in buckets.items()}
    cursor = dict.fromkeys(present, 0)
    for epoch in itertools.count():
        gen = gen if epoch == 0 else epoch_generator(epoch)
        order = []
        for k in torch.randint(len(present), (len(labels),), generator=gen).tolist():
            c = present[k]
            b = buckets[c]
            if cursor[c] == len(b):
                buckets[c] = b = b[torch.randperm(len(b), generator=gen)]
                cursor[c] = 0
            order.append(int(b[cursor[c]]))
            cursor[c] += 1
        yield torch.tensor(order, dtype=torch.int64)


@SAMPLERS.register("class_aware")
def class_aware_sampler(
    labels: np.ndarray, num_classes: int, epoch_generator: EpochGenerator, per_class: int = 4
) -> Iterator[Tensor]:
    """The ``ClassAwareSampler`` of the decoupling code (classifier-balancing, ``num_samples_cls: 4``):
    the classes in a shuffled cycle, reshuffled at every pass, each visit taking ``per_class``
    consecutive images from that class's own shuffled cycle. An epoch has as many draws as the
    dataset has images (the official ``epoch_steps``); it starts a new visit, as the official
    generator restarts each epoch, while the cycles carry over."""
    state = {"gen": epoch_generator(0)}

    def cycle(items: list[int]) -> Iterator[int]:  # RandomCycleIter: a fresh shuffle at every pass
        while True:
            for i in torch.randperm(len(items), generator=state["gen"]).tolist():
                yield items[i]

    present = [c for c in range(num_classes) if np.any(labels == c)]
    classes = cycle(present)
    images = {c: cycle(np.flatnonzero(labels == c).tolist()) for c in present}
    for epoch in itertools.count():
        if epoch:
            state["gen"] = epoch_generator(epoch)
        order: list[int] = []
        while len(order) < len(labels):
            visit = images[next(classes)]
            order.extend(next(visit) for _ in range(per_class))
        yield torch.tensor(order[: len(labels)], dtype=torch.int64)


@SAMPLERS.register("repeated_aug")
def repeated_aug_sampler(
    labels: np.ndarray, num_classes: int, epoch_generator: EpochGenerator, repeats: int = 3, round_to: int = 256
) -> Iterator[Tensor]:
    """Repeated augmentation (Hoffer et al. 2020; DeiT's ``RASampler``, 3 repeats): each image of
    a random permutation appears ``repeats`` times in a row, and the epoch keeps the first
    ``len // round_to * round_to`` draws, so it has about as many draws as the dataset has images,
    about 1/``repeats`` of them distinct (fewer than ``round_to`` images: all ``len`` draws).

    DDP: :func:`shard` gives rank r the draws r, r + W, ..., so the copies of an image go to
    different ranks and rank r's share is exactly ``RASampler``'s (``round_to`` divisible by W)."""
    n = len(labels)
    keep = n // round_to * round_to or n
    for epoch in itertools.count():
        perm = torch.randperm(n, generator=epoch_generator(epoch))
        yield perm.repeat_interleave(repeats)[:keep]


# ----------------------------------------------------------------------------- batches & loaders


@dataclass
class Batch:
    """One training or evaluation batch: one tensor per augmentation view, labels and indices."""

    views: list[Tensor]
    y: Tensor
    index: Tensor

    @property
    def x(self) -> Tensor:
        return self.views[0]

    def __len__(self) -> int:
        return len(self.y)


class BatchTransform(Protocol):
    def __call__(self, images: Tensor, gen: torch.Generator) -> Tensor: ...


SampleTransform = Callable[[object], Tensor]


@runtime_checkable
class StagedTransform(Protocol):
    """A per-image transform in two parts (``augment.Staged``): ``uint8(image)`` in the workers, then
    ``device(batch)`` on the training device (scaling and standardisation)."""

    def uint8(self, image) -> Tensor: ...

    decode_size: int  # 0, or the shorter side the recipe shrinks every image to: decoding may stop there

    def device(self, images: Tensor) -> Tensor: ...


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore torch's CPU, numpy's and Python's global RNG states afterwards."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def seed_all(seed: int) -> None:
    """Seed torch's CPU generator, ``random`` and numpy (what augmentation recipes draw from)."""
    torch.default_generator.manual_seed(seed)  # the CPU generator only: 1 us, not 100 us
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run one image's augmentation under ``seed``, leaving the global RNG states as they were."""
    with preserved_rng():
        seed_all(seed)
        yield


def shard(order: Tensor, rank: int, world: int, pad: bool) -> Tensor:
    """This rank's share of an index order: padded with a wrap-around for training (as
    DistributedSampler does), never padded for evaluation so each sample counts exactly once."""
    if world == 1:
        return order
    if pad and len(order) % world:
        order = torch.cat([order, order[: world - len(order) % world]])
    return order[rank::world]


class InMemoryLoader:
    """Batches of an in-memory split, augmented on ``device`` a whole batch at a time."""

    def __init__(
        self,
        split: TensorSplit,
        order: Tensor,
        batch_size: int,
        transforms: list[BatchTransform],
        device: torch.device,
        seed: int,
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> None:
        self.split, self.order, self.batch_size = split, order, batch_size
        self.transforms, self.device, self.seed = transforms, device, seed
        self.drop_last, self.start_batch = drop_last, start_batch

    def __len__(self) -> int:
        n = len(self.order) / self.batch_size
        return int(n) if self.drop_last else math.ceil(n)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator(device="cpu")
        for b in range(self.start_batch, len(self)):
            index = self.order[b * self.batch_size : (b + 1) * self.batch_size]
            images, y = self.split.batch(index)
            images = to_device(images, self.device)
            gen.manual_seed(derive_seed(self.seed, b))
            views = [t(images, gen) for t in self.transforms]
            yield Batch(views, to_device(y, self.device), index)


class _SeededItems(torch.utils.data.Dataset):
    """Loads one image and applies every view's transform under that item's own seed. It reseeds
    the global RNGs: a worker owns them, and in the main process :class:`WorkerLoader` restores
    them around each batch (saving numpy's state costs as much as a small augmentation)."""

    def __init__(self, split: Split, transforms: list[SampleTransform]) -> None:
        self.split, self.transforms = split, transforms
        # the smallest decode every view allows (0: full size), for file splits
        sizes = [getattr(t, "decode_size", 0) for t in transforms]
        self.draft = max(sizes) if isinstance(split, FileSplit) and all(sizes) else 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        try:
            image = self.split.load(index, self.draft) if self.draft else self.split.load(index)
        except CorruptImageError:
            if not getattr(self.split, "skip_corrupt", False):
                raise
            return None, int(self.split.labels[index]), index  # left out by _collate_readable
        seed_all(seed)
        views = [t.uint8(image) if isinstance(t, StagedTransform) else t(image) for t in self.transforms]
        return views, int(self.split.labels[index]), index


def _collate_readable(items: list[tuple]) -> tuple:
    """Collate the decoded items of a batch; also return the indices of skipped unreadable ones."""
    readable = [item for item in items if item[0] is not None]
    skipped = [item[2] for item in items if item[0] is None]
    if not readable:
        return None, None, None, skipped
    views, y, index = torch.utils.data.default_collate(readable)
    return views, y, index, skipped


class _KeyBatches(torch.utils.data.Sampler):
    """Batch sampler over (index, item seed) keys; ``set`` swaps in the next epoch's order."""

    def __init__(self, batch_size: int, drop_last: bool) -> None:
        self.batch_size, self.drop_last = batch_size, drop_last
        self.keys: list[tuple[int, int]] = []
        self.start_batch = 0

    def set(self, order: Tensor, seed: int, start_batch: int = 0) -> None:
        self.keys = [(int(i), derive_seed(seed, p)) for p, i in enumerate(order.tolist())]
        self.start_batch = start_batch

    def num_batches(self) -> int:
        n = len(self.keys) / self.batch_size
        return int(n) if self.drop_last else math.ceil(n)

    def __len__(self) -> int:
        return self.num_batches() - self.start_batch

    def __iter__(self):
        for b in range(self.start_batch, self.num_batches()):
            yield self.keys[b * self.batch_size : (b + 1) * self.batch_size]


class _EncodedItems(torch.utils.data.Dataset):
    """The file bytes of each listed image, read in the workers, for batched decoding on the GPU."""

    def __init__(self, split: FileSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        path = self.split.root / self.split.paths[index]
        if not path.is_file():
            raise DataError(f"image {path} listed in {self.split.where(index)} does not exist; check --root")
        # bytes, not a tensor: a tensor per image would leave the worker as one shared-memory file
        # descriptor each, hundreds per batch
        return path.read_bytes(), int(self.split.labels[index]), index, seed


def _collate_encoded(items: list[tuple]) -> tuple:
    data, y, index, seeds = zip(*items)
    return list(data), torch.tensor(y), torch.tensor(index), list(seeds)


def gpu_decode_check(split: Split, transforms: list[SampleTransform]) -> None:
    """Refuse ``data.decode=gpu`` where it cannot work, saying what to do."""
    if not isinstance(split, FileSplit):
        raise ConfigError("data.decode=gpu is for image-file datasets; in-memory datasets need no decoding")
    if split.skip_corrupt:
        raise ConfigError("data.decode=gpu cannot skip unreadable images; use data.decode=cpu with data.skip_corrupt")
    if not all(isinstance(t, StagedTransform) and getattr(t, "on_tensors", False) for t in transforms):
        raise ConfigError(
            "data.decode=gpu needs recipes that work on tensors (e.g. rrc_flip, rrc_flip_jitter, "
            "resize_center_crop); this run's recipes include one that uses PIL; use data.decode=cpu"
        )


MAX_AUTO_WORKERS = 16  # beyond this, more decoding processes mostly cost memory


def job_cpus() -> int:
    """The CPUs this process may use. In a Slurm job: Slurm's CPUs per task (each task is one
    process), or fewer if its affinity mask allows fewer. Elsewhere: the CPUs of its affinity mask
    shared among the processes of this machine that train together (``LOCAL_WORLD_SIZE`` ranks)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slurm = slurm_cpus_per_task()
    if slurm:
        return max(1, min(cpus, slurm))
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1)))


def loader_workers(workers: int, split: Split, device: torch.device | None = None) -> int:
    """DataLoader worker processes for ``data.workers``: -1 (auto) gives an image-file split one
    worker per CPU of the job but the one the main process needs (at most ``MAX_AUTO_WORKERS``).
    An in-memory split reaches this loader only for recipes augmented image by image (no
    whole-batch form, e.g. ``autoaug_cutout``): on CUDA it gets the same workers, so that the GPU
    does not wait for the main process to augment every image; on the CPU it stays in the main
    process, whose cores the training step already uses. 0 or more is taken as given."""
    if workers < -1:
        raise ConfigError(f"data.workers={workers}: use -1 (one per CPU of the job), 0 (the main process) or a count")
    if workers == -1:
        on_gpu = device is not None and device.type == "cuda"
        return min(job_cpus() - 1, MAX_AUTO_WORKERS) if isinstance(split, FileSplit) or on_gpu else 0
    return workers


# CPUs a GPU's data path wants when images are decoded and/or augmented one by one: at about 80-150
# images/s per core (issue 25) against the 2,500-5,000 images/s a ViT-B/16 or ResNet-50 trains at on a
# recent GPU, fewer than this leave the GPU waiting (more help, up to MAX_AUTO_WORKERS)
CPUS_PER_GPU_WANTED = 8


_warned_few_cpus: set[int] = set()  # CPU counts already warned about (a loader is made per stage and evaluation)


def warn_few_cpus(device: torch.device, workers: int, split: Split) -> bool:
    """Warn, once per process, when a GPU is fed image by image by fewer CPUs than it wants; True if it warned."""
    cpus = job_cpus()
    if device.type != "cuda" or cpus >= CPUS_PER_GPU_WANTED or cpus in _warned_few_cpus:
        return False
    _warned_few_cpus.add(cpus)
    what = "decodes and augments" if isinstance(split, FileSplit) else "augments (a recipe with no whole-batch form)"
    log.warning(
        "this process %s images one by one for its GPU with %d CPU(s) (%d DataLoader workers); a GPU wants "
        "about %d to be kept busy: ask for more (Slurm: --cpus-per-task, or fewer ranks per machine), or "
        "expect the GPU to wait for data",
        what,
        cpus,
        workers,
        CPUS_PER_GPU_WANTED,
    )
    return True


class WorkerLoader:
    """Batches decoded and augmented image by image in DataLoader workers (file datasets, or
    recipes that have no whole-batch form). Reuse one instance per stage: workers persist. A
    :class:`StagedTransform` view leaves the workers as uint8 and is scaled and standardised on
    the device.

    ``workers`` is ``data.workers`` (:func:`loader_workers`). On CUDA, batches are collated into
    pinned memory and copied without blocking; with workers, each keeps ``prefetch_factor`` (2)
    batches ready ahead of the trainer.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        transforms: list[SampleTransform],
        device: torch.device,
        workers: int,
        drop_last: bool = False,
        decode: str = "cpu",
        decode_device: torch.device | None = None,
    ) -> None:
        if decode not in ("cpu", "gpu"):
            raise ConfigError(f"data.decode={decode!r}: use cpu (PIL in the workers) or gpu (nvJPEG on the GPU)")
        self.device, self.split, self.transforms = device, split, transforms
        self.finish = [t.device if isinstance(t, StagedTransform) else None for t in transforms]
        # decode_device: where batches are decoded with data.decode=gpu (the training GPU; tests: the CPU)
        self.decode_device = None
        if decode == "gpu":
            if decode_device is None and device.type != "cuda":
                raise ConfigError(
                    f"data.decode=gpu decodes JPEGs with nvJPEG on the training GPU, but this run trains on "
                    f"{device}; use data.decode=cpu (PIL in the DataLoader workers)"
                )
            self.decode_device = decode_device or device
            gpu_decode_check(split, transforms)
        self.batches = _KeyBatches(batch_size, drop_last)
        workers = loader_workers(workers, split, device)
        warn_few_cpus(device, workers, split)
        self.loader = torch.utils.data.DataLoader(
            _SeededItems(split, transforms) if decode == "cpu" else _EncodedItems(split),
            batch_sampler=self.batches,
            num_workers=workers,
            collate_fn=_collate_readable if decode == "cpu" else _collate_encoded,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
            generator=torch.Generator(),  # never draw from the global RNG
        )

    def epoch(self, order: Tensor, seed: int, start_batch: int = 0) -> WorkerLoader:
        self.batches.set(order, seed, start_batch)
        return self

    def __len__(self) -> int:
        return self.batches.num_batches()

    def __iter__(self) -> Iterator[Batch]:
        batches = iter(self.loader)
        while True:
            # decoding in the main process reseeds its RNGs: the training step must not see that
            with preserved_rng() if self.loader.num_workers == 0 else contextlib.nullcontext():
                item = next(batches, None)
            if item is None:
                return
            if self.decode_device is not None:
                yield self._decoded(*item)
                continue
            views, y, index, skipped = item
            for i in skipped:
                self.split.note_skipped(i)
            if views is None:
                names = ", ".join(self.split.paths[i] for i in skipped)
                raise DataError(
                    f"every image of a batch is unreadable ({names}); repair or remove them from the split file"
                )
            views = [v.to(self.device, non_blocking=True) for v in views]
            views = [v if finish is None else finish(v) for v, finish in zip(views, self.finish)]
            yield Batch(views, y.to(self.device, non_blocking=True), index)

    def _decoded(self, data: list[bytes], y: Tensor, index: Tensor, seeds: list[int]) -> Batch:
        """``data.decode=gpu``: one batched nvJPEG decode, then each image's views under its own
        seed (the seeds of the worker path, so the crops and flips are the same), uint8 until the
        batch is scaled and standardised."""
        from torchvision.io import ImageReadMode, decode_jpeg

        encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.decode_device)
        except RuntimeError as err:
            names = ", ".join(self.split.paths[i] for i in index.tolist()[:3])
            raise CorruptImageError(
                f"data.decode=gpu could not decode a batch ({err}); every file must be a JPEG (batch starting "
                f"with {names}); use data.decode=cpu for other formats"
            ) from None
        views: list[list[Tensor]] = [[] for _ in self.transforms]
        with preserved_rng():
            for image, seed in zip(images, seeds):
                seed_all(seed)
                for out, t in zip(views, self.transforms):
                    out.append(t.uint8(image))
        stacked = [finish(torch.stack(v).to(self.device)) for v, finish in zip(views, self.finish)]
        return Batch(stacked, y.to(self.device, non_blocking=True), index)
