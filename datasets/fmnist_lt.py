"""Long-tailed Fashion-MNIST: the embedded default dataset, small enough to train on a laptop CPU.

Reads the four idx ``.gz`` files of the real Fashion-MNIST (Xiao et al. 2017). The training subset
follows the CIFAR-LT exponential profile ``n_i = int(img_max * (1/IF)**(i/(C-1)))`` with class 0 the
largest (defaults 1000 and IF 100: 1000, 599, 359, 215, 129, 77, 46, 27, 16, 10 images), indices
per class from a shuffle seeded by ``data.seed``. A balanced validation set (``val_per_class``) comes
from training images outside the subset; the test split is the full balanced 10,000-image test set.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ltbench.config import DataConfig, limits
from ltbench.data import LTData, LTDataset, TensorSplit, data_home, exponential_profile, fingerprint, long_tailed_subset
from ltbench.errors import DataError
from ltbench.registry import register_dataset

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# MD5 of the decompressed files (the .gz bytes differ between the original and Debian's copy)
CONTENT_MD5 = {
    "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
    "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
    "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
}
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _has_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES.values())


def candidate_dirs(root: str) -> list[Path]:
    """Where the files are looked for, in order."""
    if root:
        return [Path(root)]
    dirs = []
    if os.environ.get("LTBENCH_DATA"):
        dirs.append(Path(os.environ["LTBENCH_DATA"]) / "fashion-mnist")
    dirs.append(DEBIAN_DIR)
    return dirs


def download_dir() -> Path:
    return data_home() / "fashion-mnist"


def download(target: Path) -> None:
    """Fetch the four files from the dataset's public location into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        if (target / name).is_file():
            continue
        tmp = target / f".{name}.part"
        with urllib.request.urlopen(URL + name, timeout=60) as response, open(tmp, "wb") as f:
            f.write(response.read())
        os.replace(tmp, target / name)


def locate(root: str) -> Path:
    """The directory holding the four files; downloads them when none is found (unless
    ``LTBENCH_NO_DOWNLOAD`` is set); otherwise a DataError listing the three ways to provide them."""
    for directory in candidate_dirs(root):
        if _has_files(directory):
            return directory
    if root:
        missing = [n for n in FILES.values() if not (Path(root) / n).is_file()]
        raise DataError(f"--root {root} does not hold the Fashion-MNIST files; missing: {', '.join(missing)}")
    reason = "downloads are disabled (LTBENCH_NO_DOWNLOAD is set)"
    if not os.environ.get("LTBENCH_NO_DOWNLOAD"):
        try:
            download(download_dir())
            return download_dir()
        except OSError as err:
            reason = f"the download from {URL} failed ({err})"
    raise DataError(
        "Fashion-MNIST not found and " + reason + ". Provide it in one of three ways:\n"
        "  1. put the four files (" + ", ".join(FILES.values()) + ") in $LTBENCH_DATA/fashion-mnist "
        "or any directory passed as --root DIR;\n"
        "  2. on Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs them in "
        f"{DEBIAN_DIR});\n"
        f"  3. allow ltbench to download them from {URL} (needs internet; they are saved in {download_dir()})."
    )


def read_idx(path: Path, key: str) -> np.ndarray:
    """Parse an idx file (big-endian header: magic, then one int32 per dimension)."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable gzip file ({err}); delete it and fetch it again") from None
    if hashlib.md5(raw).hexdigest() != CONTENT_MD5[key]:
        raise DataError(
            f"{path} does not match the published Fashion-MNIST file (checksum differs); delete it and fetch it again"
        )
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@dataclass
class FashionMNISTLTParams(DataConfig):
    img_max: int = field(default=1000, metadata=limits(1))  # images of the largest class
    imb_factor: float = field(default=100.0, metadata=limits(1))  # largest / smallest class count
    val_per_class: int = field(default=20, metadata=limits(0))


@register_dataset("fmnist_lt")
class FashionMNISTLT(LTDataset):
    """Long-tailed Fashion-MNIST (10 classes, 28x28 grey): the embedded CPU default."""

    Params = FashionMNISTLTParams

    def build(self, params: FashionMNISTLTParams) -> LTData:
        directory = locate(params.root)
        arrays = {key: read_idx(directory / name, key) for key, name in FILES.items()}
        counts = exponential_profile(params.img_max, params.imb_factor, len(CLASSES))
        train_idx, val_idx = long_tailed_subset(
            arrays["train_labels"], counts, params.seed, "shuffle", params.val_per_class
        )
        images = torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1)  # [N, 1, 28, 28]
        labels = arrays["train_labels"].astype(np.int64)
        test = TensorSplit(
            torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1), arrays["test_labels"].astype(np.int64)
        )
        return LTData(
            name="fmnist_lt",
            num_classes=10,
            in_chans=1,
            image_size=28,
            mean=(0.2860,),
            std=(0.3530,),
            train=TensorSplit(images[train_idx], labels[train_idx]),
            val=TensorSplit(images[val_idx], labels[val_idx]) if len(val_idx) else None,
            test=test,
            fingerprint=fingerprint(train_idx, val_idx),
            class_names=CLASSES,
            train_augment="pad_crop_flip",
            eval_augment="normalize",
            details={
                "source": str(directory),
                "subset": "shuffle",
                "img_max": params.img_max,
                "imb_factor": params.imb_factor,
                "data_seed": params.seed,
            },
        )
