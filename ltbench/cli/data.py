"""``ltbench data info|verify|prepare``: what a dataset contains, whether the user's files are
right, and fetching what is public.

- ``info`` counts classes and images and the many/medium/few groups under every shot rule from the
  split files and labels alone (no image is opened), and prints the dataset fingerprint;
- ``verify`` opens every listed image and compares the counts with the published statistics,
  naming each missing or corrupt file; it exits 1 when anything is wrong;
- ``prepare`` downloads the public files (CIFAR archives, split files) and checks their checksums,
  and says which licensed archives the user must obtain and where to put them.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import sys
import tarfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..config import DataConfig, apply_overlay, parse_set
from ..errors import ConfigError, DataError
from ..registry import DATASETS, load_plugins
from .common import command

if TYPE_CHECKING:  # torch loads only when a data command runs, not for `ltbench --help`
    from ..data import FileSplit, LTDataset, PublishedStats, RemoteFile, SplitLabels

SHOWN_PER_KIND = 50  # missing / corrupt files listed by name unless --all


# ----------------------------------------------------------------------------- arguments


def _configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="{info,verify,prepare}")
    helps = {
        "info": "classes, split sizes, imbalance, many/medium/few groups and fingerprint (split files only)",
        "verify": "check that every listed image exists and decodes and that counts match the papers",
        "prepare": "download the public files (with checksums); say what to obtain by hand",
    }
    for name, text in helps.items():
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("--dataset", required=True, help="a registered dataset (see `ltbench list`)")
        q.add_argument("--root", help="dataset directory (same as --set data.root=DIR)")
        q.add_argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="data.KEY=VALUE",
            help="override a data.* parameter, e.g. --set data.imb_factor=50 (repeatable)",
        )
        if name == "info":
            q.add_argument("--json", action="store_true", help="print the statistics as JSON")
        if name == "verify":
            q.add_argument(
                "--workers",
                type=int,
                default=min(8, os.cpu_count() or 1),
                help="threads decoding images (default: up to 8)",
            )
            q.add_argument(
                "--all",
                action="store_true",
                help=f"list every missing or corrupt file (default: the first {SHOWN_PER_KIND} of each)",
            )


@command("data", "dataset statistics, file checks and downloads (data info | verify | prepare)", _configure)
def cmd_data(args: argparse.Namespace) -> int:
    dataset, params = dataset_params(args.dataset, args.root, args.sets)
    handler = {"info": data_info, "verify": data_verify, "prepare": data_prepare}[args.data_command]
    return handler(args, dataset, params)


def dataset_params(name: str, root: str | None, sets: list[str]) -> tuple[LTDataset, DataConfig]:
    """The dataset and its ``data.*`` parameters: defaults, then ``--set data.k=v``, then ``--root``."""
    load_plugins()
    cls = DATASETS.get(name)
    params = cls.Params()
    for assignment in sets:
        nested = parse_set(assignment)
        if list(nested) != ["data"]:
            raise ConfigError(f"--set {assignment}: data commands take data.* keys only (e.g. data.imb_factor=50)")
        apply_overlay(params, nested["data"], "data")
    if root:
        params.root = root
    return cls(), params


# ----------------------------------------------------------------------------- info


def rules_for(dataset: LTDataset) -> dict[str, str]:
    """Shot rules reported for a dataset, with what each means."""
    rules = {"strict": "n > 100 / 20 <= n <= 100 / n < 20", "oltr": "n >= 100 / 20 < n < 100 / n <= 20"}
    if dataset.index_cuts is not None:
        a, b = dataset.index_cuts
        rules[f"index:{a},{b}"] = "DeiT-LT's positions in descending-count order"
    return rules


def statistics(labels: SplitLabels, dataset: LTDataset) -> dict:
    """Everything ``data info`` prints, as plain values."""
    from ..metrics import group_sizes

    counts = labels.train_counts
    largest, smallest = int(counts.max()), int(counts.min())
    return {
        "classes": labels.num_classes,
        "train": len(labels.train),
        "val": None if labels.val is None else len(labels.val),
        "test": None if labels.test is None else len(labels.test),
        "max": largest,
        "min": smallest,
        "imbalance_factor": largest / smallest if smallest else math.inf,
        "classes_without_training_images": int((counts == 0).sum()),
        "shot_groups": {rule: group_sizes(counts, rule) for rule in rules_for(dataset)},
        "fingerprint": labels.fingerprint,
        "note": labels.note,
    }


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def format_statistics(name: str, stats: dict, rules: dict[str, str]) -> str:
    lines = [
        f"dataset           {name}",
        f"classes           {stats['classes']:,}",
        f"train images      {_n(stats['train'])}",
        f"val images        {_n(stats['val'])}",
        f"test images       {_n(stats['test'])}",
        f"max / min         {stats['max']:,} / {stats['min']:,} training images per class",
        f"imbalance factor  {stats['imbalance_factor']:.1f}",
    ]
    if stats["classes_without_training_images"]:
        lines.append(f"empty classes     {stats['classes_without_training_images']:,} without training images")
    for i, (rule, meaning) in enumerate(rules.items()):
        g = stats["shot_groups"][rule]
        head = "many/medium/few   " if i == 0 else " " * 18
        lines.append(f"{head}{g['many']:,} / {g['medium']:,} / {g['few']:,} classes  ({rule}: {meaning})")
    lines.append(f"fingerprint       {stats['fingerprint'] or '-'}")
    if stats["note"]:
        lines.append(f"note              {stats['note']}")
    return "\n".join(lines) + "\n"


def data_info(args: argparse.Namespace, dataset: LTDataset, params: DataConfig) -> int:
    stats = statistics(dataset.split_labels(params), dataset)
    if args.json:
        print(json.dumps({"dataset": args.dataset, **stats}, indent=1))
    else:
        print(format_statistics(args.dataset, stats, rules_for(dataset)), end="")
    return 0


# ----------------------------------------------------------------------------- verify


def compare_published(stats: dict, published: PublishedStats | None) -> list[str]:
    """Differences between the user's counts and the published ones."""
    if published is None:
        return []
    problems = []
    for key in ("classes", "train", "max", "min", "val", "test"):
        expected = getattr(published, key)
        if expected is not None and stats[key] != expected:
            problems.append(f"{key}: {_n(stats[key])} here, {expected:,} published")
    return problems


def check_image(split: FileSplit, index: int) -> str | None:
    """ "missing", "corrupt" or None for one listed image (decoded in full)."""
    from ..data import CorruptImageError

    try:
        split.load(index)
    except CorruptImageError:
        return "corrupt"
    except DataError:
        return "missing"
    return None


def check_images(splits: dict[str, FileSplit], workers: int) -> dict[str, list[str]]:
    """Open every listed image once (a path listed in several splits is checked once); returns
    ``{"missing": [...], "corrupt": [...]}`` as 'path (split file, line)' strings."""
    seen: set[str] = set()
    todo = []
    for split in splits.values():
        for i, path in enumerate(split.paths):
            if path not in seen:
                seen.add(path)
                todo.append((split, i))
    found: dict[str, list[str]] = {"missing": [], "corrupt": []}
    with (
        ThreadPoolExecutor(max(1, workers)) as pool,
        tqdm(total=len(todo), desc="checking images", unit="img", disable=None) as bar,
    ):
        for (split, i), verdict in zip(todo, pool.map(lambda item: check_image(*item), todo, chunksize=64)):
            if verdict:
                found[verdict].append(f"{split.root / split.paths[i]} ({split.where(i)})")
            bar.update()
    return found


def data_verify(args: argparse.Namespace, dataset: LTDataset, params: DataConfig) -> int:
    from ..data import FileSplit
    from ..filelists import FileListDataset
    from ..preflight import empty_test_classes

    labels = dataset.split_labels(params)
    stats = statistics(labels, dataset)
    problems = [
        f"counts differ from the published statistics: {p}" for p in compare_published(stats, dataset.published(params))
    ]
    problems += dataset.check_integrity(params)
    data = dataset.build(params, training=False) if isinstance(dataset, FileListDataset) else dataset.build(params)
    files = {
        name: s
        for name, s in (("train", data.train), ("val", data.val), ("test", data.test))
        if isinstance(s, FileSplit)
    }
    bad = check_images(files, args.workers) if files else {"missing": [], "corrupt": []}
    print(
        f"{args.dataset}: {stats['train']:,} train / {_n(stats['val'])} val / {_n(stats['test'])} test images, "
        f"{stats['classes']:,} classes"
    )
    if files:
        checked = len({p for s in files.values() for p in s.paths})
        print(f"images checked: {checked:,}; missing: {len(bad['missing']):,}; corrupt: {len(bad['corrupt']):,}")
    for kind, entries in bad.items():
        shown = entries if args.all else entries[:SHOWN_PER_KIND]
        for entry in shown:
            print(f"  {kind}: {entry}")
        if len(shown) < len(entries):
            print(f"  ... and {len(entries) - len(shown):,} more {kind} files (--all lists them all)")
        if entries:
            problems.append(f"{len(entries):,} {kind} images")
    warning = empty_test_classes(labels.num_classes, labels.test)
    if warning:  # the data is not wrong, but its results are not over every class
        print(f"warning: {warning}")
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{args.dataset}: {len(problems)} problem(s) found")
        return 1
    print(f"{args.dataset}: OK")
    return 0


# ----------------------------------------------------------------------------- prepare


def download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` (through a temporary file, so a broken transfer leaves nothing)."""
    if os.environ.get("LTBENCH_NO_DOWNLOAD"):
        raise OSError("downloads are disabled (LTBENCH_NO_DOWNLOAD is set)")
    tmp = dest.with_name(f".{dest.name}.part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
        size = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=size, desc=dest.name, unit="B", unit_scale=True, disable=None) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    os.replace(tmp, dest)


def file_checksum(path: Path, kind: str) -> str:
    """``md5`` of the bytes, or ``gitblob``: the git object id (SHA-1 of ``blob <size>\\0`` + bytes)."""
    if kind == "md5":
        digest = hashlib.md5()
    elif kind == "gitblob":
        digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        raise ValueError(f"unknown checksum kind {kind!r}")
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_ok(path: Path, spec: str) -> bool:
    kind, expected = spec.split(":", 1)
    return file_checksum(path, kind) == expected


def fetch(remote: RemoteFile, directory: Path) -> str:
    """Put one public file in place (download, check, unpack); returns what was done."""
    dest = directory / remote.name
    if remote.provides and (directory / remote.provides).exists():
        return f"present: {directory / remote.provides}"
    if dest.is_file():
        if not checksum_ok(dest, remote.checksum):
            raise DataError(
                f"{dest} exists but is not the published file (its checksum is not {remote.checksum}); "
                "it was left alone: move it away to fetch the published one"
            )
        done = "present and checked"
    else:
        download(remote.url, dest)
        if not checksum_ok(dest, remote.checksum):
            dest.unlink()
            raise DataError(
                f"{remote.url} was downloaded but its checksum is not {remote.checksum}; the file "
                "was deleted. Try again later, or report the changed file"
            )
        done = "downloaded and checked"
    if remote.unpack:
        with tarfile.open(dest) as archive:
            archive.extractall(directory, filter="data")
        dest.unlink()
        return f"{done} and unpacked: {remote.name} -> {directory}"
    return f"{done}: {dest}"


def offline_help(remote: RemoteFile, directory: Path, err: Exception) -> str:
    kind, value = remote.checksum.split(":", 1)
    name = {"md5": "MD5", "gitblob": "git blob id (`git hash-object FILE`)"}[kind]
    text = (
        f"could not download {remote.url} ({err}).\n"
        f"  Without internet here: download it elsewhere, check that its {name} is {value}, "
        f"and put it at {directory / remote.name}"
    )
    if remote.unpack:
        text += f", then unpack it there (tar -xzf {remote.name} -C {directory})"
    return text + "; or run this command again when online."


def data_prepare(args: argparse.Namespace, dataset: LTDataset, params: DataConfig) -> int:
    remotes = dataset.downloads(params)
    failures = []
    if remotes:
        directory = dataset.prepare_dir(params)
        directory.mkdir(parents=True, exist_ok=True)
        for remote in remotes:
            try:
                print(fetch(remote, directory))
            except (OSError, http.client.HTTPException) as err:
                failures.append(offline_help(remote, directory, err))
            except DataError as err:
                failures.append(str(err))
    steps = dataset.manual_steps(params)
    if steps:
        print(steps)
    for failure in failures:
        print(failure, file=sys.stderr)
    if not remotes and not steps:
        print(f"{args.dataset} needs no preparation")
    return 1 if failures else 0
