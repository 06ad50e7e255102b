"""CIFAR-10/100-LT from pickles in the real format: published counts, both subset variants, the
official LDAM-DRW / SHIKE subsets, validation draw, determinism, fingerprints and bad input."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ltbench.data import exponential_profile, fingerprint
from ltbench.errors import ConfigError, DataError
from ltbench.metrics import group_sizes
from ltbench.registry import DATASETS, load_plugins

load_plugins()

TRAIN_BATCHES = {"cifar10_lt": [f"data_batch_{i}" for i in range(1, 6)], "cifar100_lt": ["train"]}
TEST_BATCH = {"cifar10_lt": "test_batch", "cifar100_lt": "test"}
FOLDER = {"cifar10_lt": "cifar-10-batches-py", "cifar100_lt": "cifar-100-python"}
LABEL_KEY = {"cifar10_lt": "labels", "cifar100_lt": "fine_labels"}


def fake_labels(num_classes: int, per_class: int, seed: int = 7) -> np.ndarray:
    """Every class ``per_class`` times, in a fixed shuffled order (the real files are shuffled too)."""
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def encode_index(n: int) -> np.ndarray:
    """[n, 3072] uint8 rows whose first two bytes spell the row index, so a subset can be read back."""
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[:, 0], data[:, 1] = np.arange(n) >> 8, np.arange(n) & 255
    return data


def decode_index(images) -> np.ndarray:
    """Row indices written by :func:`encode_index`, from [N, 3, 32, 32] images."""
    flat = np.asarray(images).reshape(len(images), -1).astype(np.int64)
    return flat[:, 0] * 256 + flat[:, 1]


def write_cifar(root: Path, name: str, per_class: int, test_per_class: int = 2, str_keys: bool = False) -> Path:
    """Write pickles in the CIFAR python format: a dict per batch file with b'data' uint8 [N, 3072]
    and b'labels' / b'fine_labels', as the real files read with ``encoding="bytes"``; ``str_keys``
    gives them as the real files read with ``encoding="latin1"`` (torchvision)."""

    def key(text: str):
        return text if str_keys else text.encode()

    num_classes = 10 if name == "cifar10_lt" else 100
    folder = root / FOLDER[name]
    folder.mkdir(parents=True, exist_ok=True)
    labels = fake_labels(num_classes, per_class)
    data = encode_index(len(labels))
    batches = TRAIN_BATCHES[name]
    for batch, rows in zip(batches, np.array_split(np.arange(len(labels)), len(batches))):
        entry = {
            key("batch_label"): batch.encode(),
            key("data"): data[rows],
            key(LABEL_KEY[name]): labels[rows].tolist(),
        }
        (folder / batch).write_bytes(pickle.dumps(entry, protocol=2))
    test_labels = np.repeat(np.arange(num_classes), test_per_class)
    entry = {key("data"): encode_index(len(test_labels)), key(LABEL_KEY[name]): test_labels.tolist()}
    (folder / TEST_BATCH[name]).write_bytes(pickle.dumps(entry, protocol=2))
    meta_name, names = ("batches.meta", "label_names") if name == "cifar10_lt" else ("meta", "fine_label_names")
    (folder / meta_name).write_bytes(pickle.dumps({key(names): [f"class{c}" for c in range(num_classes)]}))
    return folder


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory) -> Path:
    """A full-size fake CIFAR-100 train set (500 images per class) under ``root/cifar-100-python``."""
    root = tmp_path_factory.mktemp("c100")
    write_cifar(root, "cifar100_lt", 500)
    return root


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory) -> Path:
    """A full-size fake CIFAR-10 train set (5000 images per class) in five batches."""
    root = tmp_path_factory.mktemp("c10")
    write_cifar(root, "cifar10_lt", 5000)
    return root


def build(name: str, root: Path, **overrides):
    ds = DATASETS.get(name)()
    params = ds.Params(root=str(root), **overrides)
    return ds, params, ds.build(params)


# ----------------------------------------------------------------------------- counts


@pytest.mark.parametrize(
    "name, imb, total, smallest",
    [
        # protocol.md "Dataset statistics" (LiVT assets/dataset_info.png; IF50 rows from the formula)
        ("cifar10_lt", 10, 20431, 500),
        ("cifar10_lt", 50, 13996, 100),
        ("cifar10_lt", 100, 12406, 50),
        ("cifar100_lt", 10, 19573, 50),
        ("cifar100_lt", 50, 12608, 10),
        ("cifar100_lt", 100, 10847, 5),
    ],
)
def test_profile_matches_published_counts(name, imb, total, smallest):
    img_max, classes = (5000, 10) if name == "cifar10_lt" else (500, 100)
    counts = exponential_profile(img_max, imb, classes)
    assert (sum(counts), counts[0], counts[-1]) == (total, img_max, smallest)


@pytest.mark.parametrize(
    "name, imb, strict, oltr",
    [
        # protocol.md "Class counts per group"
        ("cifar10_lt", 100, (8, 2, 0), (8, 2, 0)),
        ("cifar10_lt", 10, (10, 0, 0), (10, 0, 0)),
        ("cifar100_lt", 100, (35, 35, 30), (35, 34, 31)),
        ("cifar100_lt", 50, (41, 41, 18), (41, 40, 19)),
        ("cifar100_lt", 10, (69, 31, 0), (70, 30, 0)),
    ],
)
def test_shot_groups_match_protocol(name, imb, strict, oltr):
    img_max, classes = (5000, 10) if name == "cifar10_lt" else (500, 100)
    counts = exponential_profile(img_max, imb, classes)
    assert tuple(group_sizes(counts, "strict").values()) == strict
    assert tuple(group_sizes(counts, "oltr").values()) == oltr


def test_cifar100_lt_if100_subset_from_pickles(cifar100):
    _, _, data = build("cifar100_lt", cifar100)
    counts = data.train_counts
    assert len(data.train) == 10847 and counts[0] == 500 and counts[-1] == 5
    assert counts.tolist() == exponential_profile(500, 100, 100)
    assert data.num_classes == 100 and tuple(data.train.images.shape[1:]) == (3, 32, 32)
    assert data.train.images.dtype == torch.uint8 and data.test.images.dtype == torch.uint8
    assert len(data.test) == 200  # the whole (fake) balanced test set
    assert data.class_names[:2] == ["class0", "class1"]
    assert (data.train_augment, data.eval_augment) == ("pad_crop_flip", "normalize")
    assert data.mean == (0.4914, 0.4822, 0.4465) and data.std == (0.2023, 0.1994, 0.2010)
    # images follow their labels: the decoded row indices carry the labels of the source rows
    source = fake_labels(100, 500)
    assert (source[decode_index(data.train.images)] == data.train.labels).all()


def test_cifar10_lt_if100_reads_five_batches(cifar10):
    _, _, data = build("cifar10_lt", cifar10)
    assert len(data.train) == 12406
    assert data.train_counts.tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    rows = decode_index(data.train.images)
    assert (fake_labels(10, 5000)[rows] == data.train.labels).all()


# ----------------------------------------------------------------------------- official subsets

# Reference subsets obtained by running the official code outside the repository on the same fake
# CIFAR-100 (write_cifar(root, "cifar100_lt", 500, str_keys=True): labels fake_labels(100, 500), each
# row encoding its index): kaidic/LDAM-DRW@2536330 imbalance_cifar.py IMBALANCECIFAR100(imb_factor=0.01,
# rand_number=0) and jinyan-06/SHIKE@2b04b62 datasets/imbalanced_cifar.py IMBALANCECIFAR100(imb_factor=0.01),
# torchvision's md5 checks bypassed. The row indices of their `.data` (in order) were decoded; "sha256"
# is hashlib.sha256 of those indices as little-endian int64.
LDAM_DRW_IF100 = {
    "sha256": "1fe4a345fdc2fc889758354964c9ccb87d7ef07fdc4256b655d1880edd1ffde6",
    "first": [9107, 25697, 27900, 44764, 46320],
    "class99": [33427, 14731, 35104, 34869, 28832],
}
SHIKE_IF100 = {
    "sha256": "a93b610b0eff86884b8e8e85358236edcc46af78dfbc98fc531dfcf23a67c7a1",
    "first": [85, 100, 111, 161, 218],
    "class99": [403, 426, 506, 559, 747],
}


def sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(rows.astype("<i8").tobytes()).hexdigest()


def test_shuffle_subset_equals_ldam_drw(cifar100):
    _, _, data = build("cifar100_lt", cifar100)
    rows = decode_index(data.train.images)
    assert sha256(rows) == LDAM_DRW_IF100["sha256"]
    assert rows[:5].tolist() == LDAM_DRW_IF100["first"]
    assert rows[-5:].tolist() == LDAM_DRW_IF100["class99"]
    assert data.details["train_subset_fingerprint"] == fingerprint(rows)


def test_first_subset_equals_shike(cifar100):
    _, _, data = build("cifar100_lt", cifar100, subset="first")
    rows = decode_index(data.train.images)
    assert sha256(rows) == SHIKE_IF100["sha256"]
    assert rows[:5].tolist() == SHIKE_IF100["first"]
    assert rows[-5:].tolist() == SHIKE_IF100["class99"]
    # by definition: the first n_c rows of each class, in file order
    source = fake_labels(100, 500)
    expected = np.concatenate(
        [np.flatnonzero(source == c)[:n] for c, n in enumerate(exponential_profile(500, 100, 100))]
    )
    assert (rows == expected).all()


# ----------------------------------------------------------------------------- variants & val


def test_variants_same_counts_different_images(cifar100):
    _, _, a = build("cifar100_lt", cifar100)
    _, _, b = build("cifar100_lt", cifar100, subset="first")
    assert a.train_counts.tolist() == b.train_counts.tolist()
    assert set(decode_index(a.train.images)) != set(decode_index(b.train.images))
    assert a.fingerprint != b.fingerprint


def test_deterministic_and_seeded(cifar100):
    _, _, a = build("cifar100_lt", cifar100)
    _, _, b = build("cifar100_lt", cifar100)
    _, _, c = build("cifar100_lt", cifar100, seed=1)
    assert a.fingerprint == b.fingerprint
    assert (decode_index(a.train.images) == decode_index(b.train.images)).all()
    assert c.fingerprint != a.fingerprint and c.train_counts.tolist() == a.train_counts.tolist()


def test_validation_from_unused_training_images(cifar100):
    _, _, data = build("cifar100_lt", cifar100, val_per_class=20)
    train_rows, val_rows = set(decode_index(data.train.images)), set(decode_index(data.val.images))
    assert not train_rows & val_rows
    val_counts = np.bincount(data.val.labels, minlength=100)
    spare = 500 - np.asarray(exponential_profile(500, 100, 100))
    assert val_counts.tolist() == np.minimum(20, spare).tolist()  # class 0 uses all 500: no val image
    assert val_counts[0] == 0 and (val_counts[2:] == 20).all()
    _, _, none = build("cifar100_lt", cifar100, val_per_class=0)
    assert none.val is None
    # the subset does not depend on the validation size
    assert (decode_index(none.train.images) == decode_index(data.train.images)).all()


def test_imbalance_factor_and_img_max(cifar100):
    _, _, data = build("cifar100_lt", cifar100, imb_factor=50.0, img_max=400)
    assert data.train_counts.tolist() == exponential_profile(400, 50, 100)
    assert data.train_counts[0] == 400 and data.train_counts[-1] == 8


# ----------------------------------------------------------------------------- bad input


def test_missing_root_says_what_to_do(tmp_path):
    ds = DATASETS.get("cifar10_lt")()
    with pytest.raises(DataError, match="does not exist.*ltbench data prepare --dataset cifar10_lt"):
        ds.build(ds.Params(root=str(tmp_path / "nowhere")))


def test_missing_batch_file_is_named(tmp_path):
    folder = write_cifar(tmp_path, "cifar10_lt", 3)
    (folder / "data_batch_3").unlink()
    ds = DATASETS.get("cifar10_lt")()
    with pytest.raises(DataError, match="not found.*cifar-10-python.tar.gz"):
        ds.build(ds.Params(root=str(tmp_path)))


def test_env_data_dir_is_searched(tmp_path, monkeypatch):
    write_cifar(tmp_path, "cifar100_lt", 6)
    monkeypatch.setenv("LTBENCH_DATA", str(tmp_path))
    ds = DATASETS.get("cifar100_lt")()
    data = ds.build(ds.Params(img_max=6, imb_factor=2.0, val_per_class=0))
    assert data.details["source"] == str(tmp_path / "cifar-100-python")
    assert data.train_counts[0] == 6 and data.train_counts[-1] == 3


def test_pickles_with_str_keys_read_like_torchvision(tmp_path):
    """Python 2's pickles read with encoding="latin1" have str keys; both forms must work."""
    write_cifar(tmp_path, "cifar10_lt", 6, str_keys=True)
    _, _, data = build("cifar10_lt", tmp_path, img_max=6, imb_factor=3.0, val_per_class=0)
    assert data.train_counts.tolist() == exponential_profile(6, 3.0, 10)
    assert data.class_names[9] == "class9"


def test_root_may_be_the_batch_folder_itself(tmp_path):
    folder = write_cifar(tmp_path, "cifar100_lt", 6)
    _, _, data = build("cifar100_lt", folder, img_max=6, imb_factor=2.0)
    assert data.details["source"] == str(folder)


def test_corrupt_pickle_is_named(tmp_path):
    folder = write_cifar(tmp_path, "cifar100_lt", 6)
    (folder / "train").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"train is not a CIFAR-100 python pickle"):
        build("cifar100_lt", tmp_path, img_max=6)


def test_wrong_shape_and_labels_are_errors(tmp_path):
    folder = write_cifar(tmp_path, "cifar100_lt", 6)
    (folder / "train").write_bytes(pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"fine_labels": [0, 1, 2, 3]}))
    with pytest.raises(DataError, match="3072 bytes"):
        build("cifar100_lt", tmp_path, img_max=6)
    (folder / "train").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [100]}))
    with pytest.raises(DataError, match="outside 0..99"):
        build("cifar100_lt", tmp_path, img_max=6)


def test_too_few_images_for_the_profile(tmp_path):
    write_cifar(tmp_path, "cifar10_lt", 6)
    with pytest.raises(ConfigError, match="class 0 has 6 images, fewer than the 5000"):
        build("cifar10_lt", tmp_path)


def test_unknown_subset_variant_is_rejected():
    from ltbench.config import resolve_config

    with pytest.raises(ConfigError, match="shuffle, first"):
        resolve_config("ce", "cifar10_lt", sets=["data.subset=random"])
