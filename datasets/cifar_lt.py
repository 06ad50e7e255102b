"""CIFAR-10-LT and CIFAR-100-LT, built from the standard CIFAR python pickles as LDAM-DRW does.

Class c keeps ``n_c = int(img_max * (1/IF)**(c/(C-1)))`` training images (LDAM-DRW
``get_img_num_per_cls``; img_max 5000 / 500, i.e. every image of the largest class). Which images:

- ``shuffle`` (default; LDAM-DRW ``IMBALANCECIFAR*``, RIDE, MDCS, LiVT, DeiT-LT): ``np.random.seed(0)``
  once, then per class, in order, shuffle its indices and keep the first n_c (``data.seed`` = 0
  reproduces their subset exactly);
- ``first`` (SHIKE ``datasets/imbalanced_cifar.py``): the first n_c indices of each class.

The test split is the full balanced test set. The validation split takes up to ``val_per_class``
of each class's unused training images (the next ones in its shuffled list), so it never changes
the subset; with the default img_max class 0 has no unused image and no validation image.
The fingerprint hashes the chosen indices.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ltbench.config import DataConfig, limits
from ltbench.data import (
    LTData,
    LTDataset,
    PublishedStats,
    RemoteFile,
    SplitLabels,
    TensorSplit,
    data_home,
    exponential_profile,
    fingerprint,
    long_tailed_subset,
)
from ltbench.errors import DataError
from ltbench.registry import register_dataset

URL = "https://www.cs.toronto.edu/~kriz/"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


@dataclass
class CifarLTParams(DataConfig):
    # largest / smallest class count (10, 50, 100, 200 in the papers)
    imb_factor: float = field(default=100.0, metadata=limits(1))
    img_max: int = field(default=0, metadata=limits(0))  # images of class 0; 0 = all of them (5000 / 500), as LDAM-DRW
    subset: str = field(default="shuffle", metadata={"choices": ("shuffle", "first")})
    # validation images per class, from training images outside the subset
    val_per_class: int = field(default=20, metadata=limits(0))
    mean: tuple[float, float, float] = MEAN  # per-channel normalisation (DeiT-LT: ImageNet's)
    std: tuple[float, float, float] = STD


def _load_pickle(path: Path) -> dict:
    # The files were written by Python 2: latin1 turns its str keys into str, as torchvision reads them
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _entry(batch: dict, key: str):
    """``batch[key]``, also under a bytes key (pickles re-written by Python 3 with bytes keys)."""
    return batch[key] if key in batch else batch[key.encode()]


@dataclass(frozen=True)
class CifarFiles:
    """One CIFAR variant's pickles: folder, batch names, label key and published MD5s."""

    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    md5: dict[str, str]
    archive: str
    archive_md5: str


class CifarLT(LTDataset):
    """Shared body of CIFAR-10-LT and CIFAR-100-LT; subclasses set the variant."""

    Params = CifarLTParams
    files: ClassVar[CifarFiles]
    num_classes: ClassVar[int]
    per_class: ClassVar[int]  # training images per class in the full set
    test_per_class: ClassVar[int]
    title: ClassVar[str]
    published_train: ClassVar[dict[float, tuple[int, int]]]  # protocol.md: IF -> (train images, min count)

    # -- locating and reading -------------------------------------------------------------
    def candidate_dirs(self, root: str) -> list[Path]:
        """Where the pickles are looked for: --root (holding the folder, or the folder itself),
        else $LTBENCH_DATA (or ~/.cache/ltbench, where `data prepare` puts them)."""
        if root:
            return [Path(root) / self.files.folder, Path(root)]
        return [data_home() / self.files.folder]

    def locate(self, root: str) -> Path | None:
        needed = (*self.files.train, self.files.test)
        return next((d for d in self.candidate_dirs(root) if all((d / n).is_file() for n in needed)), None)

    def require(self, root: str) -> Path:
        directory = self.locate(root)
        if directory is not None:
            return directory
        where = " or ".join(str(d) for d in self.candidate_dirs(root))
        if root and not Path(root).is_dir():
            where = f"--root {root}, which does not exist"
        raise DataError(
            f"{self.title} pickles ({self.files.folder}/{', '.join((*self.files.train, self.files.test))}) not found "
            f"in {where}. Run `ltbench data prepare --dataset {self.registered_name} [--root DIR]` to download "
            f"them (needs internet), or download {URL}{self.files.archive} yourself and unpack it in DIR "
            f"(then pass --root DIR, or set LTBENCH_DATA=DIR)"
        )

    def read_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            batch = _load_pickle(path)
            data = np.asarray(_entry(batch, "data"), dtype=np.uint8)
            labels = np.asarray(_entry(batch, self.files.label_key), dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise DataError(
                f"{path} is not a {self.title} python pickle ({type(err).__name__}: {err}); delete it "
                f"and run `ltbench data prepare --dataset {self.registered_name}`"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DataError(
                f"{path}: expected {len(labels)} rows of 3072 bytes, found an array of shape "
                f"{data.shape}; delete it and download the dataset again"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(f"{path}: a label is outside 0..{self.num_classes - 1}; is this {self.title}?")
        return data.reshape(-1, 3, 32, 32), labels

    def read(self, directory: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.read_batch(directory / name) for name in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def class_names(self, directory: Path) -> list[str] | None:
        """Class names from the meta pickle; None when it is absent or unreadable (`data verify`
        reports a damaged one through its checksum)."""
        try:
            names = _entry(_load_pickle(directory / self.files.meta), self.files.names_key)
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            return None

    # -- the subset -----------------------------------------------------------------------
    def counts(self, params: CifarLTParams) -> list[int]:
        return exponential_profile(params.img_max or self.per_class, params.imb_factor, self.num_classes)

    def build(self, params: CifarLTParams) -> LTData:
        directory = self.require(params.root)
        images, labels = self.read(directory, self.files.train)
        test_images, test_labels = self.read(directory, (self.files.test,))
        train_idx, val_idx = long_tailed_subset(
            labels, self.counts(params), params.seed, params.subset, params.val_per_class
        )
        images_t = torch.from_numpy(images)
        return LTData(
            name=self.registered_name,
            num_classes=self.num_classes,
            in_chans=3,
            image_size=32,
            mean=tuple(params.mean),
            std=tuple(params.std),
            train=TensorSplit(images_t[train_idx], labels[train_idx]),
            val=TensorSplit(images_t[val_idx], labels[val_idx]) if len(val_idx) else None,
            test=TensorSplit(torch.from_numpy(test_images), test_labels),
            fingerprint=fingerprint(train_idx, val_idx),
            class_names=self.class_names(directory),
            train_augment="pad_crop_flip",
            eval_augment="normalize",
            details={
                "source": str(directory),
                "subset": params.subset,
                "img_max": params.img_max or self.per_class,
                "imb_factor": params.imb_factor,
                "data_seed": params.seed,
                "val_per_class": params.val_per_class,
                "train_subset_fingerprint": fingerprint(train_idx),
            },
        )

    # -- data info / verify / prepare -----------------------------------------------------
    def split_labels(self, params: CifarLTParams) -> SplitLabels:
        if self.locate(params.root) is not None:
            return super().split_labels(params)
        counts = np.asarray(self.counts(params))  # without the pickles: the construction formula
        spare = np.minimum(params.val_per_class, self.per_class - counts)
        classes = np.arange(self.num_classes)
        return SplitLabels(
            self.num_classes,
            np.repeat(classes, counts),
            np.repeat(classes, spare),
            np.repeat(classes, self.test_per_class),
            fingerprint="",
            note=f"pickles not found: counts from the construction formula; the fingerprint "
            f"needs the pickles (`ltbench data prepare --dataset {self.registered_name}`)",
        )

    def published(self, params: CifarLTParams) -> PublishedStats | None:
        if params.img_max not in (0, self.per_class) or params.imb_factor not in self.published_train:
            return None
        train, smallest = self.published_train[params.imb_factor]
        return PublishedStats(
            classes=self.num_classes,
            train=train,
            max=self.per_class,
            min=smallest,
            test=self.num_classes * self.test_per_class,
        )

    def check_integrity(self, params: CifarLTParams) -> list[str]:
        directory = self.require(params.root)
        problems = []
        for name, expected in self.files.md5.items():
            path = directory / name
            if not path.is_file():
                problems.append(f"{path} is missing")
            elif hashlib.md5(path.read_bytes()).hexdigest() != expected:
                problems.append(f"{path} differs from the published file (MD5 is not {expected})")
        return problems

    def prepare_dir(self, params: CifarLTParams) -> Path:
        return Path(params.root) if params.root else data_home()

    def downloads(self, params: CifarLTParams) -> list[RemoteFile]:
        return [
            RemoteFile(
                URL + self.files.archive,
                self.files.archive,
                f"md5:{self.files.archive_md5}",
                unpack=True,
                provides=f"{self.files.folder}/{self.files.test}",
            )
        ]


CIFAR10_FILES = CifarFiles(
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test="test_batch",
    meta="batches.meta",
    label_key="labels",
    names_key="label_names",
    md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    archive="cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR100_FILES = CifarFiles(
    folder="cifar-100-python",
    train=("train",),
    test="test",
    meta="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    md5={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    archive="cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
)


@register_dataset("cifar10_lt")
class Cifar10LT(CifarLT):
    """CIFAR-10-LT (10 classes, 32x32): exponential profile from the CIFAR-10 pickles, IF 100 by default."""

    files = CIFAR10_FILES
    num_classes, per_class, test_per_class = 10, 5000, 1000
    title = "CIFAR-10"
    index_cuts = (3, 7)  # DeiT-LT --categories
    published_train = {10.0: (20431, 500), 50.0: (13996, 100), 100.0: (12406, 50)}


@register_dataset("cifar100_lt")
class Cifar100LT(CifarLT):
    """CIFAR-100-LT (100 classes, 32x32): exponential profile from the CIFAR-100 pickles, IF 100 by default."""

    files = CIFAR100_FILES
    num_classes, per_class, test_per_class = 100, 500, 100
    title = "CIFAR-100"
    index_cuts = (36, 71)  # DeiT-LT --categories
    published_train = {10.0: (19573, 50), 50.0: (12608, 10), 100.0: (10847, 5)}
