"""Long-tailed Fashion-MNIST built from the real idx files."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch
from conftest import needs_fmnist

from ltbench.config import resolve_config
from ltbench.data import long_tailed_subset
from ltbench.datasets.fmnist_lt import FILES, FashionMNISTLT, locate, read_idx
from ltbench.errors import ConfigError, DataError
from ltbench.metrics import group_sizes

pytestmark = needs_fmnist


def build(*sets):
    cfg = resolve_config("ce", "fmnist_lt", None, list(sets))
    return FashionMNISTLT().build(cfg.data)


def test_default_subset_counts_and_splits():
    data = build()
    assert data.train_counts.tolist() == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    assert len(data.train) == 2478
    assert group_sizes(data.train_counts, "strict") == {"many": 5, "medium": 3, "few": 2}
    assert np.bincount(data.val.labels).tolist() == [20] * 10
    assert np.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.train.images.shape == (2478, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.in_chans == 1 and data.image_size == 28 and data.num_classes == 10


def test_subset_is_seeded_and_validation_disjoint():
    labels = read_idx(locate("") / FILES["train_labels"], "train_labels")
    counts = [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    train, val = long_tailed_subset(labels, counts, seed=0, val_per_class=20)
    again, _ = long_tailed_subset(labels, counts, seed=0, val_per_class=20)
    other, _ = long_tailed_subset(labels, counts, seed=1, val_per_class=20)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    assert not set(train) & set(val)
    assert np.bincount(labels[train]).tolist() == counts
    first, _ = long_tailed_subset(labels, counts, seed=0, variant="first")
    assert np.array_equal(first[:1000], np.flatnonzero(labels == 0)[:1000])
    with pytest.raises(ConfigError):
        long_tailed_subset(labels, [7000] + counts[1:], seed=0)


def test_fingerprint_follows_the_subset():
    a, b = build(), build()
    assert a.fingerprint == b.fingerprint and torch.equal(a.train.images, b.train.images)
    assert build("data.seed=1").fingerprint != a.fingerprint
    c = build("data.imb_factor=10")
    assert c.train_counts.tolist()[-1] == 100 and c.fingerprint != a.fingerprint


def test_any_directory_with_the_four_files(tmp_path):
    for name in FILES.values():
        shutil.copy(locate("") / name, tmp_path / name)
    assert build(f"data.root={tmp_path}").fingerprint == build().fingerprint
    (tmp_path / FILES["test_labels"]).write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz does not match the published"):
        build(f"data.root={tmp_path}")
    (tmp_path / FILES["test_labels"]).write_bytes(b"garbage")
    with pytest.raises(DataError, match="is not a readable gzip file"):
        build(f"data.root={tmp_path}")
