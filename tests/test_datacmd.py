"""`ltbench data info | verify | prepare` through the CLI: statistics from split files alone (real
Places-LT files, an iNaturalist-sized list), verification of every file, checksums and downloads
(never touching the network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from test_datasets_cifar import write_cifar
from test_datasets_files import COUNTS, entries, imagenet_tree, make_tree

from ltbench.cli import data as datacmd
from ltbench.data import RemoteFile


@pytest.fixture
def no_data_home(tmp_path, monkeypatch) -> Path:
    """An empty $LTBENCH_DATA, so real datasets on this machine are never found."""
    home = tmp_path / "data-home"
    home.mkdir()
    monkeypatch.setenv("LTBENCH_DATA", str(home))
    return home


# ----------------------------------------------------------------------------- info


def test_info_real_places_lt(cli, shared):
    code, out, err = cli("data", "info", "--dataset", "places_lt", "--set", f"data.split_dir={shared}/data/splits")
    assert code == 0, err
    assert "train images      62,500" in out and "val images        7,300" in out
    assert "test images       36,500" in out and "classes           365" in out
    assert "max / min         4,980 / 5" in out and "imbalance factor  996.0" in out
    assert "131 / 163 / 71 classes  (strict" in out and "132 / 156 / 77 classes  (oltr" in out
    assert "index:" not in out  # DeiT-LT defines no cut points for Places-LT
    code, out2, _ = cli(
        "data",
        "info",
        "--dataset",
        "places_lt",
        "--set",
        f"data.split_dir={shared}/data/splits",
        "--set",
        "data.reindex=true",
        "--json",
    )
    stats = json.loads(out2)
    assert stats["shot_groups"]["strict"] == {"many": 131, "medium": 163, "few": 71}
    assert stats["fingerprint"] not in out  # the class order is part of the fingerprint


def test_info_inat_sized_list(cli, shared, tmp_path):
    """437,513 lines from the recorded iNaturalist class counts: parsed from the split files only."""
    counts = json.loads((shared / "data/class_counts/inat2018.json").read_text())["train_counts"]
    labels = np.repeat(np.arange(len(counts)), counts)
    (tmp_path / "iNaturalist18_train.txt").write_text(
        "".join(f"train_val2018/x/{y}/{i}.jpg {y}\n" for i, y in enumerate(labels.tolist()))
    )
    (tmp_path / "iNaturalist18_val.txt").write_text("".join(f"v/{c}.jpg {c}\n" for c in range(8142) for _ in range(3)))
    code, out, err = cli("data", "info", "--dataset", "inat2018", "--set", f"data.split_dir={tmp_path}", "--json")
    assert code == 0, err
    stats = json.loads(out)
    sizes = (stats["classes"], stats["train"], stats["test"], stats["max"], stats["min"])
    assert sizes == (8142, 437513, 24426, 1000, 2)
    assert stats["imbalance_factor"] == 500.0
    assert stats["shot_groups"]["strict"] == {"many": 842, "medium": 4076, "few": 3224}
    assert stats["shot_groups"]["index:842,4543"] == {"many": 842, "medium": 3701, "few": 3599}
    assert stats["val"] == 3 * 8142 - int((np.asarray(counts) < 3).sum())  # drawn: up to 3 per class
    assert "not held out" in stats["note"]


def test_info_cifar_from_the_formula(cli, no_data_home):
    code, out, err = cli("data", "info", "--dataset", "cifar100_lt")
    assert code == 0, err
    assert "train images      10,847" in out and "max / min         500 / 5" in out
    assert "35 / 35 / 30 classes  (strict" in out and "35 / 34 / 31 classes  (oltr" in out
    assert "36 / 35 / 29 classes  (index:36,71" in out
    assert "fingerprint       -" in out and "pickles not found" in out
    code, out, _ = cli("data", "info", "--dataset", "cifar10_lt", "--set", "data.imb_factor=50", "--json")
    stats = json.loads(out)
    assert (stats["train"], stats["min"], stats["test"]) == (13996, 100, 10000)
    assert stats["shot_groups"]["strict"] == {"many": 9, "medium": 1, "few": 0}
    assert stats["shot_groups"]["index:3,7"] == {"many": 3, "medium": 4, "few": 3}


def test_info_cifar_with_pickles_has_a_fingerprint(cli, tmp_path):
    write_cifar(tmp_path, "cifar10_lt", 10)
    code, out, err = cli(
        "data",
        "info",
        "--dataset",
        "cifar10_lt",
        "--root",
        str(tmp_path),
        "--json",
        "--set",
        "data.img_max=10",
        "--set",
        "data.imb_factor=5",
        "--set",
        "data.val_per_class=2",
    )
    assert code == 0, err
    stats = json.loads(out)
    assert stats["train"] == sum(int(10 * 0.2 ** (i / 9)) for i in range(10)) and len(stats["fingerprint"]) == 16
    assert stats["val"] == 18 and stats["note"] == ""  # class 0 has no spare image


def test_info_only_takes_data_keys(cli):
    code, _, err = cli("data", "info", "--dataset", "cifar10_lt", "--set", "stages.train.epochs=3")
    assert code == 2 and "data.* keys only" in err
    code, _, err = cli("data", "info", "--dataset", "cifar10_lt", "--set", "data.imb=3")
    assert code == 2 and "unknown config key 'data.imb'" in err


def test_info_missing_split_file_is_an_error(cli, tmp_path):
    code, _, err = cli("data", "info", "--dataset", "imagenet_lt", "--root", str(tmp_path))
    assert code == 2 and "ImageNet-LT train split file not found" in err


# ----------------------------------------------------------------------------- verify


def places_tree(root: Path) -> Path:
    return make_tree(
        root,
        {
            "Places_LT_train.txt": entries("data_256", COUNTS),
            "Places_LT_val.txt": entries("data_256", [1] * 5),
            "Places_LT_test.txt": entries("val_256", [2] * 5),
        },
    )


def test_verify_good_tree(cli, tmp_path):
    make_tree(tmp_path, {"train.txt": entries("t", COUNTS), "test.txt": entries("v", [1] * 5)})
    code, out, err = cli("data", "verify", "--dataset", "folder_lt", "--root", str(tmp_path))
    assert code == 0, out + err
    assert "images checked: 21; missing: 0; corrupt: 0" in out and "folder_lt: OK" in out


def test_verify_names_missing_and_corrupt_files(cli, tmp_path):
    places_tree(tmp_path)
    (tmp_path / "data_256/c2/1.jpg").unlink()
    (tmp_path / "val_256/c4/0.jpg").write_bytes(b"not a jpeg")
    code, out, _ = cli("data", "verify", "--dataset", "places_lt", "--root", str(tmp_path))
    assert code == 1
    assert f"missing: {tmp_path}/data_256/c2/1.jpg ({tmp_path}/Places_LT_train.txt, line 12)" in out
    assert f"corrupt: {tmp_path}/val_256/c4/0.jpg ({tmp_path}/Places_LT_test.txt, line 9)" in out
    assert "missing: 1; corrupt: 1" in out
    assert "problem: 1 missing images" in out and "problem: 1 corrupt images" in out
    # the tiny tree is not the published Places-LT either
    assert "problem: counts differ from the published statistics: train: 16 here, 62,500 published" in out


def test_verify_lists_at_most_fifty_unless_all(cli, tmp_path):
    make_tree(tmp_path, {"train.txt": entries("t", [60]), "test.txt": entries("v", [1])})
    for i in range(60):
        (tmp_path / f"t/c0/{i}.jpg").unlink()
    code, out, _ = cli(
        "data", "verify", "--dataset", "folder_lt", "--root", str(tmp_path), "--set", "data.val_per_class=0"
    )
    assert code == 1 and out.count("  missing: ") == 50 and "... and 10 more missing files" in out
    code, out, _ = cli(
        "data", "verify", "--dataset", "folder_lt", "--root", str(tmp_path), "--all", "--set", "data.val_per_class=0"
    )
    assert out.count("  missing: ") == 60


def test_verify_cifar_checks_published_checksums(cli, tmp_path):
    folder = write_cifar(tmp_path, "cifar100_lt", 500)
    code, out, _ = cli("data", "verify", "--dataset", "cifar100_lt", "--root", str(tmp_path))
    assert code == 1
    assert (
        f"problem: {folder}/train differs from the published file (MD5 is not 16019d7e3df5f24257cddd939b257f8d)"
    ) in out
    # 10,847 training images, 500 / 5 as published; the fake test set is smaller than the real one
    assert out.count("counts differ") == 1 and "statistics: test: 200 here, 10,000 published" in out
    assert "images checked" not in out  # nothing to decode: the images are in the pickles


def test_verify_missing_root(cli, tmp_path):
    code, _, err = cli("data", "verify", "--dataset", "places_lt", "--root", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err


# ----------------------------------------------------------------------------- prepare


def test_checksums_by_hand(tmp_path):
    path = tmp_path / "hello"
    path.write_bytes(b"hello\n")
    assert datacmd.file_checksum(path, "gitblob") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object
    assert datacmd.file_checksum(path, "md5") == "b1946ac92492d2347c6235b4d2611184"  # md5sum
    assert datacmd.checksum_ok(path, "md5:b1946ac92492d2347c6235b4d2611184")


def test_prepare_offline_says_what_to_download(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("LTBENCH_NO_DOWNLOAD")

    def offline(url, dest):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datacmd, "download", offline)
    code, out, err = cli("data", "prepare", "--dataset", "cifar10_lt", "--root", str(tmp_path))
    assert code == 1
    assert (
        "could not download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (<urlopen error no network>)"
    ) in err
    assert "MD5 is c58f30108f718f92721af3b95e74349a" in err
    assert f"put it at {tmp_path}/cifar-10-python.tar.gz, then unpack it there" in err


def test_prepare_respects_no_download(cli, tmp_path):
    code, out, err = cli("data", "prepare", "--dataset", "places_lt", "--root", str(tmp_path))
    assert code == 1
    assert "downloads are disabled (LTBENCH_NO_DOWNLOAD is set)" in err
    assert (
        "Vanint/SADE-AgnosticLT/cba11b8b0fb91711eeffd5e45311f321f8a88680/data_txt/Places_LT_v2/Places_LT_train.txt"
    ) in err
    assert "train_256_places365standard.tar" in out and "val_256.tar" in out  # the licensed images


def test_prepare_fetches_split_files_and_explains_images(cli, tmp_path, monkeypatch, shared):
    monkeypatch.delenv("LTBENCH_NO_DOWNLOAD")
    served = []

    def fake_download(url, dest):  # serve the real files from ../shared
        served.append(url)
        dest.write_bytes(gzip.decompress((shared / "data/splits" / f"{dest.name}.gz").read_bytes()))

    monkeypatch.setattr(datacmd, "download", fake_download)
    code, out, err = cli("data", "prepare", "--dataset", "places_lt", "--root", str(tmp_path))
    assert code == 0, err
    assert out.count("downloaded and checked") == 3 and len(served) == 3
    assert f"  {tmp_path}/data_256/a/airfield/00004851.jpg" in out  # layout example from the split file
    assert f"ltbench data verify --dataset places_lt --root {tmp_path}" in out
    code, out, _ = cli("data", "prepare", "--dataset", "places_lt", "--root", str(tmp_path))
    assert code == 0 and len(served) == 3 and out.count("present and checked") == 3  # nothing fetched again


def test_prepare_rejects_a_wrong_checksum(tmp_path, monkeypatch):
    monkeypatch.delenv("LTBENCH_NO_DOWNLOAD")
    monkeypatch.setattr(datacmd, "download", lambda url, dest: dest.write_bytes(b"tampered"))
    remote = RemoteFile("https://example.org/x.txt", "x.txt", "gitblob:" + "0" * 40)
    with pytest.raises(datacmd.DataError, match="checksum is not gitblob:0000"):
        datacmd.fetch(remote, tmp_path)
    assert not (tmp_path / "x.txt").exists()


def test_prepare_unpacks_a_checked_archive(tmp_path, monkeypatch):
    monkeypatch.delenv("LTBENCH_NO_DOWNLOAD")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"data"))
    blob = buffer.getvalue()
    monkeypatch.setattr(datacmd, "download", lambda url, dest: dest.write_bytes(blob))
    remote = RemoteFile(
        "https://example.org/a.tar.gz",
        "a.tar.gz",
        f"md5:{hashlib.md5(blob).hexdigest()}",
        unpack=True,
        provides="cifar-10-batches-py/test_batch",
    )
    assert "unpacked" in datacmd.fetch(remote, tmp_path)
    assert (tmp_path / "cifar-10-batches-py/test_batch").read_bytes() == b"data"
    assert not (tmp_path / "a.tar.gz").exists()
    assert datacmd.fetch(remote, tmp_path).startswith("present")


def test_prepare_imagenet_names_the_licensed_archives(cli, tmp_path):
    imagenet_tree(tmp_path)
    code, out, err = cli("data", "prepare", "--dataset", "imagenet_lt", "--root", str(tmp_path))
    assert "ILSVRC2012_img_train.tar" in out and "ILSVRC2012_img_val.tar" in out
    assert "https://image-net.org/download-images" in out
    assert code == 1  # the tiny lists are not the published ones, and are left alone
    assert f"{tmp_path}/ImageNet_LT_train.txt exists but is not the published file" in err
    assert (tmp_path / "ImageNet_LT_train.txt").read_text().startswith("train/c0/0.jpg 0")


def test_prepare_folder_lt_explains_the_format(cli, tmp_path):
    code, out, _ = cli("data", "prepare", "--dataset", "folder_lt", "--root", str(tmp_path))
    assert code == 0 and "one `relative/path.jpg <class index>` per line" in out
