"""Image-file datasets (ImageNet-LT, Places-LT, iNaturalist 2018, folder_lt): split-file parsing on
tiny JPEG trees and on the real split files in ../shared, re-indexing, validation draws,
fingerprints, every bad-input error, skipping corrupt images, and a smoke run per dataset kind."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ltbench.data as data_mod
from ltbench.data import CorruptImageError, FileSplit, WorkerLoader, loader_workers
from ltbench.errors import ConfigError, DataError
from ltbench.filelists import class_map_by_count, draw_per_class, introsort_argsort, read_inat_json, read_list
from ltbench.metrics import group_sizes
from ltbench.registry import DATASETS, load_plugins

load_plugins()

COUNTS = [6, 4, 3, 2, 1]  # training images per class of the tiny trees
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def write_jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 36)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


def entries(prefix: str, counts: list[int], labels: list[int] | None = None) -> list[tuple[str, int]]:
    """``(relpath, label)`` for ``counts[c]`` images of each class c (label ``labels[c]`` if given)."""
    labels = labels or list(range(len(counts)))
    return [(f"{prefix}/c{labels[c]}/{i}.jpg", labels[c]) for c, n in enumerate(counts) for i in range(n)]


def write_split(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p} {y}\n" for p, y in rows))
    return path


def make_tree(root: Path, splits: dict[str, list[tuple[str, int]]], split_dir: Path | None = None) -> Path:
    """Write a JPEG for every listed entry (coloured by label) and one split file per name."""
    for rows in splits.values():
        for relpath, label in rows:
            if not (root / relpath).exists():
                write_jpeg(root / relpath, COLOURS[label % len(COLOURS)], size=(36 + 2 * label, 40))
    for name, rows in splits.items():
        write_split((split_dir or root) / name, rows)
    return root


def imagenet_tree(root: Path, **kwargs) -> Path:
    return make_tree(
        root,
        {
            "ImageNet_LT_train.txt": entries("train", COUNTS),
            "ImageNet_LT_val.txt": entries("valsplit", [2] * 5),
            "ImageNet_LT_test.txt": entries("val", [3] * 5),
        },
        **kwargs,
    )


def inat_tree(root: Path) -> Path:
    """Both index forms of one tiny iNaturalist: text lists and official-style json."""
    train, test = entries("train_val2018/Plantae", COUNTS), entries("train_val2018/Plantae", [1] * 5)
    test = [(p.replace("/0.jpg", "/v.jpg"), y) for p, y in test]
    make_tree(root, {"iNaturalist18_train.txt": train, "iNaturalist18_val.txt": test})
    for name, rows in (("train2018.json", train), ("val2018.json", test)):
        order = list(reversed(rows))  # a different order than the lists: labels must follow their images
        index = {
            "images": [{"id": 1000 + i, "file_name": p} for i, (p, _) in enumerate(order)],
            "annotations": [{"id": i, "image_id": 1000 + i, "category_id": y} for i, (_, y) in enumerate(order)],
            "categories": [{"id": c, "name": f"s{c}"} for c in range(5)],
        }
        (root / name).write_text(json.dumps(index))
    return root


def dataset(name: str, **params):
    ds = DATASETS.get(name)()
    return ds, ds.Params(**params)


# ----------------------------------------------------------------------------- parsing


def test_read_list_ignores_blank_lines_and_keeps_line_numbers(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("a/x.jpg 3\n\n  b/y.jpg\t7  \r\nc/z.jpg 0")  # blank line, tabs, CRLF, no final newline
    lst = read_list(path)
    assert lst.paths == ["a/x.jpg", "b/y.jpg", "c/z.jpg"]
    assert lst.labels.tolist() == [3, 7, 0] and lst.lines.tolist() == [1, 3, 4]
    assert lst.where(1) == f"{path}, line 3"


def test_read_list_reads_gzip(tmp_path):
    path = tmp_path / "s.txt.gz"
    path.write_bytes(gzip.compress(b"a.jpg 1\nb.jpg 2\n"))
    assert read_list(path).labels.tolist() == [1, 2]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a.jpg 1\nb.jpg 2 extra\n", r"line 2: expected `relative/path label`"),
        ("a.jpg 1\nb.jpg\n", r"line 2: expected `relative/path label`"),
        ("a.jpg 1\n\nb.jpg two\n", r"line 3: the label 'two' is not an integer"),
        ("\n\n", "lists no images"),
    ],
)
def test_read_list_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_list(path)
    assert str(path) in str(err.value)


def test_inat_json_follows_image_ids(tmp_path):
    inat_tree(tmp_path)
    lst = read_inat_json(tmp_path / "train2018.json")
    text = read_list(tmp_path / "iNaturalist18_train.txt")
    assert dict(zip(lst.paths, lst.labels.tolist())) == dict(zip(text.paths, text.labels.tolist()))
    assert lst.paths[0] == text.paths[-1]  # json order is kept


def test_inat_json_errors(tmp_path):
    (tmp_path / "a.json").write_text('{"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": []}')
    with pytest.raises(DataError, match="1 images have no annotation"):
        read_inat_json(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"annotations": []}')
    with pytest.raises(DataError, match="not an iNaturalist json index"):
        read_inat_json(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable json index"):
        read_inat_json(tmp_path / "c.json")


# ----------------------------------------------------------------------------- building


def test_imagenet_lt_tree_builds_file_splits(tmp_path):
    imagenet_tree(tmp_path)
    ds, params = dataset("imagenet_lt", root=str(tmp_path), image_size=32)
    data = ds.build(params)
    assert data.num_classes == 1000 and data.image_size == 32
    assert (len(data.train), len(data.val), len(data.test)) == (16, 10, 15)
    assert data.train_counts[:6].tolist() == COUNTS + [0]
    assert (data.train_augment, data.eval_augment) == ("rrc_flip", "resize_center_crop")
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    assert data.details["val_split"] == "file" and data.details["reindex"] is False
    image = data.train.load(0)
    assert image.mode == "RGB" and image.size == (36, 40)
    assert isinstance(data.train, FileSplit) and data.train.where(0).endswith("ImageNet_LT_train.txt, line 1")


def test_split_dir_and_deit_lt_spelling(tmp_path):
    splits = tmp_path / "lists"
    make_tree(
        tmp_path / "img",
        {"Imagenet_LT_train.txt": entries("train", COUNTS), "Imagenet_LT_test.txt": entries("val", [1] * 5)},
        split_dir=splits,
    )
    ds, params = dataset("imagenet_lt", root=str(tmp_path / "img"), split_dir=str(splits))
    data = ds.build(params)
    assert len(data.train) == 16 and len(data.test) == 5
    # no _val.txt: the validation split is drawn (3 per class, not held out)
    assert np.bincount(data.val.labels, minlength=5)[:5].tolist() == [3, 3, 3, 2, 1]
    assert "not held out" in data.details["val_split"]


def test_places_lt_statistics_without_images(tmp_path):
    """split_labels needs the split files only: the image root may be missing."""
    make_tree(
        tmp_path,
        {
            "Places_LT_train.txt": entries("data_256", COUNTS),
            "Places_LT_val.txt": entries("data_256", [1] * 5),
            "Places_LT_test.txt": entries("val_256", [2] * 5),
        },
    )
    ds, params = dataset("places_lt", root=str(tmp_path / "missing-images"), split_dir=str(tmp_path))
    labels = ds.split_labels(params)
    assert labels.num_classes == 365 and labels.train_counts[:5].tolist() == COUNTS
    with pytest.raises(DataError, match=r"--root .*missing-images does not exist"):
        ds.build(params)


def test_reindex_by_descending_count(tmp_path):
    counts = [2, 5, 5, 1, 3]
    make_tree(tmp_path, {"train.txt": entries("t", counts), "test.txt": entries("v", [1] * 5)})
    # by hand: order of classes by count 5, 5, 3, 2, 1 -> classes 1, 2, 4, 0, 3 (tie 1/2 in index order)
    expected_map = [3, 0, 1, 4, 2]
    assert class_map_by_count(np.repeat(np.arange(5), counts), 5).tolist() == expected_map
    ds, params = dataset("folder_lt", root=str(tmp_path), reindex=True, val_per_class=1)
    data = ds.build(params)
    assert data.train_counts.tolist() == [5, 5, 3, 2, 1]
    assert data.details["class_map"] == expected_map
    assert data.test.labels.tolist() == [expected_map[c] for c in range(5)]
    original = read_list(tmp_path / "train.txt")
    assert (data.train.labels == np.asarray(expected_map)[original.labels]).all()
    assert data.train.paths == original.paths  # images keep their files
    plain = ds.build(ds.Params(root=str(tmp_path), val_per_class=1))
    assert plain.fingerprint != data.fingerprint  # the class order is part of the dataset version


# Class maps computed by the official code under numpy 1.24.3 (DeiT-LT's environment.yml pin), run
# outside the repository with torch/torchvision/timm stubbed out: MDCS places_loader.LT_Dataset on
# ../shared Places_LT_train.txt, and DeiT-LT datasets.KD_IMAGENETLT / KD_INAT2018 on lists written from
# ../shared class_counts/{imagenet_lt,inat2018}.json (class c repeated train_counts[c] times). "sha256" is
# hashlib.sha256 of the class map as little-endian int64.
OFFICIAL_CLASS_MAPS = {
    "places_lt": (
        "d21318909053a652ee31a2a086d1440b9512c7a8a88a61d934988a3d8b0c6a9d",
        [71, 288, 118, 157, 67, 256, 273, 0, 123, 1],
    ),
    "imagenet_lt": (
        "9e4b5f92fbb8a9c6d5748dc0390586aa72f44c33a40468776b84aab7f97abef5",
        [618, 109, 19, 51, 246, 411, 640, 651, 235, 625],
    ),
    "inat2018": (
        "cd9bc2ac0888a333623509e8537166a6fd83ac3bd2eba84c1aea15ef7095f766",
        [4080, 1843, 605, 1522, 5994, 5116, 6649, 3275, 999, 5117],
    ),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_CLASS_MAPS))
def test_reindex_reproduces_official_class_maps(shared, name):
    counts = json.loads((shared / f"data/class_counts/{name}.json").read_text())["train_counts"]
    class_map = class_map_by_count(np.repeat(np.arange(len(counts)), counts), len(counts))
    digest, first = OFFICIAL_CLASS_MAPS[name]
    assert hashlib.sha256(class_map.astype("<i8").tobytes()).hexdigest() == digest
    assert class_map[:10].tolist() == first
    assert (np.diff(np.asarray(counts)[np.argsort(class_map)]) <= 0).all()  # descending counts


def test_introsort_argsort_orders_ties_as_numpy_1_24():
    # numpy 1.24.3 np.argsort of this array (one quicksort partition, then insertion sorts)
    values = [0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 1]
    assert introsort_argsort(values).tolist() == [0, 1, 3, 4, 5, 6, 12, 9, 10, 14, 13, 8, 15, 7, 2, 11, 16]
    assert introsort_argsort([0] * 16).tolist() == list(range(16))  # up to 16 items: insertion sort, stable
    rng = np.random.RandomState(0)
    for n in (0, 1, 2, 40, 3000):
        values = rng.randint(0, 4, size=n)
        order = introsort_argsort(values)
        assert sorted(order.tolist()) == list(range(n)) and (np.diff(values[order]) >= 0).all()


def test_inat_txt_and_json_forms_agree(tmp_path):
    inat_tree(tmp_path)
    ds, txt_params = dataset("inat2018", root=str(tmp_path), format="txt")
    txt = ds.build(txt_params)
    js = ds.build(ds.Params(root=str(tmp_path), format="json"))
    auto = ds.build(ds.Params(root=str(tmp_path)))
    assert txt.num_classes == 8142 and txt.train_counts[:5].tolist() == COUNTS
    assert js.train_counts.tolist() == txt.train_counts.tolist()
    assert dict(zip(js.test.paths, js.test.labels.tolist())) == dict(zip(txt.test.paths, txt.test.labels.tolist()))
    assert auto.details["split_files"]["train"].endswith("iNaturalist18_train.txt")
    assert js.details["split_files"]["test"].endswith("val2018.json")


def test_inat_validation_draw(tmp_path):
    inat_tree(tmp_path)
    ds, params = dataset("inat2018", root=str(tmp_path), format="txt")
    data = ds.build(params)
    assert np.bincount(data.val.labels, minlength=5)[:5].tolist() == [3, 3, 3, 2, 1]
    assert len(data.train) == 16 and set(data.val.paths) <= set(data.train.paths)  # monitoring only
    held = ds.build(ds.Params(root=str(tmp_path), format="txt", val_held_out=True))
    assert np.bincount(held.val.labels, minlength=5)[:5].tolist() == [3, 3, 2, 1, 0]  # each class keeps one
    assert held.train_counts[:5].tolist() == [3, 1, 1, 1, 1]
    assert not set(held.val.paths) & set(held.train.paths)
    assert held.fingerprint != data.fingerprint
    again = ds.build(params)
    assert again.val.paths == data.val.paths and again.fingerprint == data.fingerprint
    other = ds.build(ds.Params(root=str(tmp_path), format="txt", seed=1))
    assert other.val.paths != data.val.paths


def test_draw_per_class_by_hand():
    labels = np.array([0, 1, 0, 2, 1, 0, 0])
    drawn = draw_per_class(labels, 3, per_class=2, seed=0, held_out=False)
    assert np.bincount(labels[drawn], minlength=3).tolist() == [2, 2, 1]
    held = draw_per_class(labels, 3, per_class=2, seed=0, held_out=True)
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]
    assert (np.diff(drawn) > 0).all()


def test_fingerprint_tracks_contents(tmp_path):
    make_tree(tmp_path, {"train.txt": entries("t", COUNTS), "test.txt": entries("v", [1] * 5)})
    ds, params = dataset("folder_lt", root=str(tmp_path))
    first = ds.split_labels(params).fingerprint
    assert ds.split_labels(params).fingerprint == first
    rows = entries("t", COUNTS)
    rows[0] = (rows[0][0], 1)  # one label changed
    write_split(tmp_path / "train.txt", rows)
    assert ds.split_labels(params).fingerprint != first


def test_folder_lt_num_classes(tmp_path):
    make_tree(tmp_path, {"train.txt": entries("t", COUNTS), "test.txt": entries("v", [1] * 5)})
    ds, params = dataset("folder_lt", root=str(tmp_path))
    assert ds.build(params).num_classes == 5
    assert ds.build(ds.Params(root=str(tmp_path), num_classes=7)).num_classes == 7


# ----------------------------------------------------------------------------- bad input


def test_missing_root_argument(tmp_path):
    ds, params = dataset("places_lt")
    with pytest.raises(DataError, match="no --root given"):
        ds.build(params)


def test_missing_root_directory(tmp_path):
    ds, params = dataset("imagenet_lt", root=str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"--root .*nope does not exist.*ltbench data prepare --dataset imagenet_lt"):
        ds.build(params)


def test_missing_split_file(tmp_path):
    make_tree(tmp_path, {"ImageNet_LT_train.txt": entries("train", COUNTS)})
    ds, params = dataset("imagenet_lt", root=str(tmp_path))
    with pytest.raises(
        DataError,
        match=r"ImageNet-LT test split file not found in .* \(looked for "
        r"ImageNet_LT_test.txt, Imagenet_LT_test.txt, also .gz\)",
    ):
        ds.build(params)


def test_label_out_of_range_names_file_and_line(tmp_path):
    rows = entries("train", COUNTS)
    rows[4] = (rows[4][0], 1000)
    make_tree(
        tmp_path, {"ImageNet_LT_train.txt": entries("train", COUNTS), "ImageNet_LT_test.txt": entries("val", [1] * 5)}
    )
    write_split(tmp_path / "ImageNet_LT_train.txt", rows)
    ds, params = dataset("imagenet_lt", root=str(tmp_path))
    with pytest.raises(
        DataError,
        match=r"ImageNet_LT_train.txt, line 5: label 1000 is out of range for "
        r"1000 classes \(0..999\)",
    ):
        ds.build(params)
    write_split(tmp_path / "ImageNet_LT_train.txt", [("a.jpg", -1)])
    with pytest.raises(DataError, match="line 1: label -1 is out of range"):
        ds.build(params)


def test_folder_lt_label_beyond_num_classes(tmp_path):
    make_tree(tmp_path, {"train.txt": entries("t", COUNTS), "test.txt": entries("v", [1] * 5)})
    ds, params = dataset("folder_lt", root=str(tmp_path), num_classes=3)
    with pytest.raises(DataError, match=r"train.txt, line 14: label 3 is out of range for 3 classes"):
        ds.build(params)


def test_missing_image_names_file_and_line(tmp_path):
    imagenet_tree(tmp_path)
    (tmp_path / "train/c1/2.jpg").unlink()
    ds, params = dataset("imagenet_lt", root=str(tmp_path))
    data = ds.build(params)
    with pytest.raises(
        DataError,
        match=r"train/c1/2.jpg listed in .*ImageNet_LT_train.txt, line 9 does not "
        r"exist; check --root",
    ):
        data.train.load(8)


def test_corrupt_image_names_file_and_line(tmp_path):
    imagenet_tree(tmp_path)
    (tmp_path / "train/c0/3.jpg").write_bytes(b"\xff\xd8 truncated")
    ds, params = dataset("imagenet_lt", root=str(tmp_path))
    data = ds.build(params)
    with pytest.raises(
        CorruptImageError,
        match=r"train/c0/3.jpg listed in .*ImageNet_LT_train.txt, line 4 "
        r"cannot be decoded.*data.skip_corrupt=true",
    ):
        data.train.load(3)


def test_corrupt_image_stops_the_loader_unless_skipped(tmp_path):
    imagenet_tree(tmp_path)
    (tmp_path / "train/c0/3.jpg").write_bytes(b"garbage")
    ds, params = dataset("imagenet_lt", root=str(tmp_path), image_size=8)
    from ltbench.augment import build_recipes

    data = ds.build(params)
    recipe = build_recipes(["default"], data, train=False)[0]
    loader = WorkerLoader(data.train, 4, [recipe.sample], torch.device("cpu"), workers=0)
    with pytest.raises(CorruptImageError):
        list(loader.epoch(torch.arange(16), seed=0))

    data = ds.build(ds.Params(root=str(tmp_path), image_size=8, skip_corrupt=True))
    loader = WorkerLoader(data.train, 4, [recipe.sample], torch.device("cpu"), workers=0)
    for _ in range(2):  # two epochs: the image is skipped (and counted) each time
        batches = list(loader.epoch(torch.arange(16), seed=0))
        assert [len(b) for b in batches] == [3, 4, 4, 4]
        assert 3 not in batches[0].index.tolist()
    assert data.details["skipped_corrupt"] == {"train": {"train/c0/3.jpg": 2}, "val": {}, "test": {}}
    json.dumps(data.details)  # it goes into run.json as is


# ----------------------------------------------------------------------------- workers


@pytest.mark.parametrize(
    "affinity, env, expected",
    [
        (8, {}, 7),  # one CPU stays with the main process
        (64, {}, 16),  # capped
        (1, {}, 0),  # a single CPU: decode in the main process
        (64, {"SLURM_CPUS_PER_TASK": "6"}, 5),  # a Slurm job: its --cpus-per-task
        (4, {"SLURM_CPUS_PER_TASK": "32"}, 3),  # ... but never more than the CPUs it may run on
        (64, {"SLURM_CPUS_ON_NODE": "40", "SLURM_NTASKS_PER_NODE": "4"}, 9),  # no --cpus-per-task: the node's share
        (32, {"LOCAL_WORLD_SIZE": "4"}, 7),  # 4 DDP ranks on this machine share its CPUs
        (8, {"SLURM_CPUS_PER_TASK": "8", "LOCAL_WORLD_SIZE": "4"}, 7),  # ... a Slurm task's are its own
    ],
)
def test_auto_workers_from_the_cpus_of_the_job(monkeypatch, affinity, env, expected):
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(data_mod.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    files = FileSplit(Path("."), ["a.jpg"], np.zeros(1))
    assert loader_workers(-1, files) == expected
    assert loader_workers(3, files) == 3 and loader_workers(0, files) == 0  # explicit counts as given
    tensors = data_mod.TensorSplit(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), np.zeros(1))
    assert loader_workers(-1, tensors) == 0  # in-memory images stay in the main process
    assert loader_workers(-1, tensors, torch.device("cpu")) == 0  # ... whose cores train on the CPU
    # ... but get workers for their per-image recipes when a GPU trains
    assert loader_workers(-1, tensors, torch.device("cuda")) == expected
    with pytest.raises(ConfigError, match=r"data.workers=-2: use -1"):
        loader_workers(-2, files)


def test_same_batches_with_and_without_workers(tmp_path):
    """Per-image seeds: the same training batches (random crops and flips of noise images) from the
    main process and from 2 workers, and other batches under another epoch seed."""
    rng = np.random.default_rng(0)
    rows = entries("t", [5, 4, 3])
    for relpath, _ in rows:
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / relpath, "JPEG")
    write_split(tmp_path / "train.txt", rows)
    write_split(tmp_path / "test.txt", rows[:3])
    from ltbench.augment import build_recipes

    ds, params = dataset("folder_lt", root=str(tmp_path), image_size=16)
    data = ds.build(params)
    recipes = build_recipes(["rrc_flip", "default"], data, train=True)
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))

    def batches(workers: int, seed: int) -> list:
        loader = WorkerLoader(data.train, 4, [r.sample for r in recipes], torch.device("cpu"), workers)
        return list(loader.epoch(order, seed))

    before = torch.get_rng_state(), np.random.get_state()[1].copy()
    main = batches(0, seed=7)
    # decoding in the main process leaves the training RNGs as they were
    assert torch.equal(torch.get_rng_state(), before[0]) and (np.random.get_state()[1] == before[1]).all()
    two = batches(2, seed=7)
    assert [len(b) for b in main] == [4, 4, 4] and len(two) == 3
    for a, b in zip(main, two):
        assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y)
        assert all(torch.equal(u, v) for u, v in zip(a.views, b.views))
    other = batches(0, seed=8)
    assert not torch.equal(main[0].views[0], other[0].views[0])


# ----------------------------------------------------------------------------- real split files


def test_real_places_lt_splits(shared):
    ds, params = dataset("places_lt", split_dir=str(shared / "data/splits"))
    labels = ds.split_labels(params)
    assert labels.num_classes == 365
    assert (len(labels.train), len(labels.val), len(labels.test)) == (62500, 7300, 36500)
    counts = labels.train_counts
    assert (counts.max(), counts.min()) == (4980, 5)
    recorded = json.loads((shared / "data/class_counts/places_lt.json").read_text())["train_counts"]
    assert counts.tolist() == recorded
    assert tuple(group_sizes(counts, "strict").values()) == (131, 163, 71)
    assert tuple(group_sizes(counts, "oltr").values()) == (132, 156, 77)
    assert ((counts == 100).sum(), (counts == 20).sum()) == (1, 6)  # protocol.md boundary classes
    assert (np.bincount(labels.val, minlength=365) == 20).all()
    assert (np.bincount(labels.test, minlength=365) == 100).all()


def test_real_imagenet_lt_eval_splits(shared):
    val = read_list(shared / "data/splits/ImageNet_LT_val.txt.gz")
    test = read_list(shared / "data/splits/ImageNet_LT_test.txt.gz")  # no trailing newline
    assert (len(val), len(test)) == (20000, 50000)
    assert np.bincount(val.labels).tolist() == [20] * 1000
    assert np.bincount(test.labels).tolist() == [50] * 1000
    assert test.paths[0] == "val/ILSVRC2012_val_00029930.JPEG" and test.lines[-1] == 50000


@pytest.mark.parametrize(
    "name, strict, index_rule, index_sizes",
    [
        # protocol.md "Class counts per group"
        ("imagenet_lt", (385, 479, 136), "index:390,835", (390, 445, 165)),
        ("inat2018", (842, 4076, 3224), "index:842,4543", (842, 3701, 3599)),
        ("places_lt", (131, 163, 71), None, None),
    ],
)
def test_real_class_counts_groups(shared, name, strict, index_rule, index_sizes):
    counts = json.loads((shared / f"data/class_counts/{name}.json").read_text())["train_counts"]
    assert tuple(group_sizes(counts, "strict").values()) == strict
    published = DATASETS.get(name).published_stats
    assert (len(counts), sum(counts), max(counts), min(counts)) == (
        published.classes,
        published.train,
        published.max,
        published.min,
    )
    cuts = DATASETS.get(name).index_cuts
    if index_rule:
        assert f"index:{cuts[0]},{cuts[1]}" == index_rule
        assert tuple(group_sizes(counts, index_rule).values()) == index_sizes
    else:
        assert cuts is None


def test_pinned_split_checksums_match_the_real_files(shared, tmp_path):
    """The git blob ids `data prepare` checks are those of the files in ../shared (same files)."""
    from ltbench.cli.data import file_checksum

    pinned = {
        r.name: r.checksum
        for name in ("places_lt", "imagenet_lt")
        for r in DATASETS.get(name)().downloads(DATASETS.get(name).Params())
    }
    for name in ("Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt", "ImageNet_LT_val.txt"):
        raw = tmp_path / name
        raw.write_bytes(gzip.decompress((shared / f"data/splits/{name}.gz").read_bytes()))
        assert pinned[name] == f"gitblob:{file_checksum(raw, 'gitblob')}"


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_smoke_run_on_every_dataset_kind(tmp_path, results, cli):
    from test_datasets_cifar import write_cifar

    write_cifar(tmp_path / "cifar", "cifar10_lt", 8)
    imagenet_tree(tmp_path / "inlt")
    make_tree(
        tmp_path / "places",
        {
            "Places_LT_train.txt": entries("data_256", COUNTS),
            "Places_LT_val.txt": entries("data_256", [1] * 5),
            "Places_LT_test.txt": entries("val_256", [2] * 5),
        },
    )
    inat_tree(tmp_path / "inat")
    make_tree(tmp_path / "folder", {"train.txt": entries("t", COUNTS), "test.txt": entries("v", [2] * 5)})
    file_sets = ["--set", "data.image_size=32", "--set", "stages.train.augment=default"]
    one_epoch = ["--set", "stages.train.epochs=1"]
    runs = {
        "cifar10_lt": ["--set", "data.img_max=8", "--set", "data.imb_factor=4", "--set", "data.val_per_class=0"],
        "imagenet_lt": file_sets + ["--set", "data.reindex=true"],
        "places_lt": file_sets + ["--set", "data.skip_corrupt=true"],
        "inat2018": file_sets + ["--set", "data.format=json"],
        "folder_lt": file_sets,
    }
    for name, extra in runs.items():
        root = {
            "cifar10_lt": "cifar",
            "imagenet_lt": "inlt",
            "places_lt": "places",
            "inat2018": "inat",
            "folder_lt": "folder",
        }[name]
        code, out, err = cli(
            "run",
            "--method",
            "ce",
            "--dataset",
            name,
            "--preset",
            "smoke",
            "--quiet",
            "--root",
            str(tmp_path / root),
            "--set",
            "train.device=cpu",
            *one_epoch,
            *extra,
        )
        assert code == 0, f"{name}: {err}"
        (record_path,) = (results / "runs" / name / "ce").glob("*/run.json")
        record = json.loads(record_path.read_text())
        assert record["dataset_fingerprint"] and sum(record["splits"]["test"]["heads"]["main"]["total"]) > 0
        if name == "imagenet_lt":
            assert record["dataset_details"]["class_map"][:5] == [0, 1, 2, 3, 4]
        if name == "places_lt":
            assert record["dataset_details"]["skipped_corrupt"] == {"train": {}, "val": {}, "test": {}}


def test_in_memory_per_image_recipes_give_the_same_batches_in_workers():
    """An in-memory split with a per-image recipe (AutoAugment + Cutout, no whole-batch form), as it
    runs in workers on a GPU: the same batches as in the main process, for one seed."""
    from ltbench.augment import build_recipes
    from ltbench.data import LTData, TensorSplit

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=gen)
    split = TensorSplit(images, np.arange(10) % 2)
    data = LTData("mem", 2, 3, 16, (0.5,) * 3, (0.25,) * 3, split, None, split, "x")
    recipes = build_recipes(["autoaug_cutout", "pad_crop_flip"], data, train=True)
    assert recipes[0].batch is None  # the per-image path
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))

    def batches(workers: int, seed: int) -> list:
        loader = WorkerLoader(split, 4, [r.sample for r in recipes], torch.device("cpu"), workers)
        return list(loader.epoch(order, seed))

    main, two = batches(0, seed=3), batches(2, seed=3)
    assert [len(b) for b in two] == [4, 4, 2]
    for a, b in zip(main, two):
        assert torch.equal(a.index, b.index) and all(torch.equal(u, v) for u, v in zip(a.views, b.views))
    assert not torch.equal(main[0].views[0], batches(0, seed=4)[0].views[0])


def test_a_gpu_fed_image_by_image_by_too_few_cpus_is_warned_about(monkeypatch, caplog):
    monkeypatch.setattr(data_mod, "job_cpus", lambda: 4)
    monkeypatch.setattr(data_mod, "_warned_few_cpus", set())
    files = FileSplit(Path("."), ["a.jpg"], np.zeros(1))
    with caplog.at_level("WARNING", logger="ltbench"):
        assert data_mod.warn_few_cpus(torch.device("cuda"), 3, files)
        assert not data_mod.warn_few_cpus(torch.device("cuda"), 3, files)  # once, not at every evaluation
    assert "with 4 CPU(s) (3 DataLoader workers)" in caplog.text and "--cpus-per-task" in caplog.text
    assert not data_mod.warn_few_cpus(torch.device("cpu"), 3, files)  # a CPU run trains on those cores
    monkeypatch.setattr(data_mod, "job_cpus", lambda: data_mod.CPUS_PER_GPU_WANTED)
    assert not data_mod.warn_few_cpus(torch.device("cuda"), 7, files)


def test_workers_ship_uint8_and_the_device_normalises_to_the_per_image_values(tmp_path):
    """A quarter of the bytes through the workers' queues and the host-to-device copy: the items
    leave the workers as uint8, and the batch, scaled and standardised on the device, equals the
    whole per-image recipe (ToDtype + Normalize in the worker) bit for bit."""
    from torchvision.transforms import v2

    from ltbench.augment import build_recipes
    from ltbench.data import _SeededItems, seeded

    rng = np.random.default_rng(0)
    rows = entries("t", [3, 2])
    for relpath, _ in rows:
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / relpath, "JPEG")
    write_split(tmp_path / "train.txt", rows)
    write_split(tmp_path / "test.txt", rows[:3])
    ds, params = dataset("folder_lt", root=str(tmp_path), image_size=16)
    data = ds.build(params)
    recipe = build_recipes(["rrc_flip"], data, train=True)[0]
    views, _, _ = _SeededItems(data.train, [recipe.sample])[(0, 11)]
    assert views[0].dtype == torch.uint8 and views[0].shape == (3, 16, 16)
    # the float pipeline as it was: the same steps with ToDtype + Normalize in the worker
    whole = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(16, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(data.mean), list(data.std)),
        ]
    )
    order = torch.arange(len(data.train))
    batch = next(iter(WorkerLoader(data.train, 5, [recipe.sample], torch.device("cpu"), 0).epoch(order, 3)))
    assert batch.x.dtype == torch.float32 and batch.x.stride(1) == 1  # channels-last, as the batch forms
    for i, key in enumerate(item_seeds(order, 3)):
        with seeded(key):
            expected = whole(data.train.load(i))
        assert torch.equal(batch.x[i], expected)


def item_seeds(order: torch.Tensor, seed: int) -> list[int]:
    return [data_mod.derive_seed(seed, p) for p in range(len(order))]


def test_evaluation_resizes_decode_jpegs_at_a_reduced_scale(tmp_path):
    """Image.draft where the recipe shrinks anyway: a 1024 x 768 JPEG for Resize(256) + CenterCrop(224)
    is decoded at 1/2 scale (512 x 384: still at least 256 on both sides), not at full size; a random
    resized crop, which may keep a small window at full resolution, decodes in full."""
    from ltbench.augment import build_recipes
    from ltbench.data import _SeededItems

    rows = entries("t", [2, 1])
    for relpath, _ in rows:
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (1024, 768), (120, 30, 200)).save(tmp_path / relpath, "JPEG")
    write_split(tmp_path / "train.txt", rows)
    write_split(tmp_path / "test.txt", rows)
    ds, params = dataset("folder_lt", root=str(tmp_path), image_size=224)
    data = ds.build(params)
    assert data.test.load(0, draft=256).size == (512, 384)
    assert data.test.load(0).size == (1024, 768)
    evaluation = _SeededItems(data.test, [build_recipes(["resize_center_crop"], data, train=False)[0].sample])
    assert evaluation.draft == 256
    views, _, _ = evaluation[(0, 1)]
    assert views[0].shape == (3, 224, 224)
    assert (views[0].int() - torch.tensor([120, 30, 200])[:, None, None]).abs().max() <= 3
    assert _SeededItems(data.train, [build_recipes(["rrc_flip"], data)[0].sample]).draft == 0


def jpeg_folder(tmp_path, size=(40, 30)):
    rng = np.random.default_rng(0)
    rows = entries("t", [3, 2])
    for relpath, _ in rows:
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / relpath, "JPEG")
    write_split(tmp_path / "train.txt", rows)
    write_split(tmp_path / "test.txt", rows[:3])
    ds, params = dataset("folder_lt", root=str(tmp_path), image_size=16)
    return ds.build(params)


def test_gpu_decoding_gives_the_worker_paths_batches(tmp_path):
    """data.decode=gpu: the workers read the bytes, decode_jpeg decodes each batch at once and each
    image gets its views under its own seed: the crops and flips of the PIL path, the pixels of
    torchvision's JPEG decoder (here on the CPU, which the test machine has; nvJPEG on a GPU may
    differ from it by a few grey levels)."""
    from ltbench.augment import build_recipes

    data = jpeg_folder(tmp_path)
    recipes = [r.sample for r in build_recipes(["rrc_flip", "resize_center_crop"], data, train=True)]
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))

    def batches(**decode) -> list:
        loader = WorkerLoader(data.train, 2, recipes, torch.device("cpu"), 0, **decode)
        return list(loader.epoch(order, 5))

    pil, gpu = batches(), batches(decode="gpu", decode_device=torch.device("cpu"))
    assert [len(b) for b in gpu] == [2, 2, 1]
    for a, b in zip(pil, gpu):
        assert torch.equal(a.index, b.index) and torch.equal(a.y, b.y)
        for u, v in zip(a.views, b.views):
            assert u.shape == v.shape and v.stride(1) == 1
            assert (u - v).abs().max() <= 3 / 255 / min(data.std) + 1e-5  # the same crop, near-equal pixels
    again = batches(decode="gpu", decode_device=torch.device("cpu"))
    assert all(torch.equal(u, v) for a, b in zip(gpu, again) for u, v in zip(a.views, b.views))


def test_gpu_decoding_refuses_clearly_where_it_cannot_work(tmp_path):
    from ltbench.augment import build_recipes

    data = jpeg_folder(tmp_path)
    tensors = [build_recipes(["rrc_flip"], data)[0].sample]
    with pytest.raises(ConfigError, match="trains on cpu; use data.decode=cpu"):
        WorkerLoader(data.train, 2, tensors, torch.device("cpu"), 0, decode="gpu")
    pil = [build_recipes(["randaug_erase"], data)[0].sample]
    with pytest.raises(ConfigError, match="recipes that work on tensors"):
        WorkerLoader(data.train, 2, pil, torch.device("cpu"), 0, decode="gpu", decode_device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="data.decode='nvjpeg'"):
        WorkerLoader(data.train, 2, tensors, torch.device("cpu"), 0, decode="nvjpeg")
