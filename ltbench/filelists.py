"""Image-file datasets listed in split files: the shared reader, checks and class handling.

ImageNet-LT, Places-LT, iNaturalist 2018 and ``folder_lt`` all come as ``relpath label`` split
files (OLTR's format, read by RIDE, MDCS, SADE and DeiT-LT with ``line.split()``) or, for
iNaturalist, the official COCO-style json indexes, plus an image root. One reader serves all of
them, so every bad line is reported the same way (file, line, what to do), and one base class
turns the lists into an :class:`~ltbench.data.LTData`:

- labels are checked against the number of classes before anything is trained; a class without
  training images and an image listed twice with two labels are refused by ``build`` (reported by
  ``ltbench data verify`` with duplicate lines and test images that are also training images);
- with ``reindex`` classes are renumbered by descending training count, ``np.argsort(-counts)``
  as DeiT-LT (``KD_IMAGENETLT``, ``KD_INAT2018``) and MDCS (``places_loader.py``) do, ties in the
  order of the numpy they ran (< 1.25), and the mapping is stored in ``LTData.details`` (run.json);
- where a dataset has no validation split file (iNaturalist, where val2018 is the test set as in
  every paper), ``val_per_class`` training images per class are drawn with ``data.seed``. They stay
  in the training set unless ``val_held_out`` is set, so by default the training set is exactly the
  papers': such a split serves monitoring, and is no held-out estimate for model selection;
- the fingerprint hashes every split's relpaths and (final) labels.

Statistics (``ltbench data info``) need the split files only: the image root may be absent.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from .config import NONSEMANTIC, DataConfig, limits
from .data import FileSplit, LTData, LTDataset, PublishedStats, SplitLabels, fingerprint
from .errors import DataError

log = logging.getLogger("ltbench")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the iNaturalist 2018 statistics the official iNat loaders of RIDE, LiVT, MDCS and Saddle-LongTail
# (the LDAM-DRW+SAM teacher of DeiT-LT) normalise with; every preset that follows them uses these
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- reading


@dataclass
class FileList:
    """The entries of one split file: relative paths, integer labels and where each came from."""

    paths: list[str]
    labels: np.ndarray
    source: str
    lines: np.ndarray | None = None  # 1-based line numbers (None for json indexes)

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, i: int) -> str:
        if self.lines is not None:
            return f"{self.source}, line {int(self.lines[i])}"
        return f"{self.source} (entry {self.paths[i]})"

    def take(self, index: np.ndarray) -> FileList:
        return FileList(
            [self.paths[i] for i in index],
            self.labels[index],
            self.source,
            None if self.lines is None else self.lines[index],
        )

    def relabel(self, class_map: np.ndarray) -> FileList:
        return FileList(self.paths, class_map[self.labels], self.source, self.lines)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_list(path: Path) -> FileList:
    """Parse a ``relpath label`` file (optionally gzipped). Blank lines are ignored; any other
    line that is not exactly a path and an integer is an error naming the file and line."""
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2:
                    raise DataError(
                        f"{path}, line {lineno}: expected `relative/path label`, got {line.strip()!r}; "
                        "fix the line (paths may not contain spaces)"
                    )
                try:
                    labels.append(int(fields[1]))
                except ValueError:
                    raise DataError(
                        f"{path}, line {lineno}: the label {fields[1]!r} is not an integer class index"
                    ) from None
                paths.append(fields[0])
                lines.append(lineno)
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path} is not a readable text split file ({err}); download it again") from None
    if not paths:
        raise DataError(f"{path} lists no images; download it again or point to the right file")
    return FileList(paths, np.asarray(labels, dtype=np.int64), str(path), np.asarray(lines, dtype=np.int64))


def read_inat_json(path: Path) -> FileList:
    """Parse an official iNaturalist index (``train2018.json``/``val2018.json``: COCO-style
    ``images``, ``annotations``, ``categories``); label = ``category_id``, in ``images`` order."""
    try:
        with _open_text(path) as f:
            index = json.load(f)
        category = {a["image_id"]: a["category_id"] for a in index["annotations"]}
        images = index["images"]
        paths = [img["file_name"] for img in images]
        missing = [img["file_name"] for img in images if img["id"] not in category]
        if missing:
            raise DataError(
                f"{path}: {len(missing)} images have no annotation (first: {missing[0]}); download the index again"
            )
        labels = np.asarray([category[img["id"]] for img in images], dtype=np.int64)
    except (json.JSONDecodeError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path} is not a readable json index ({err}); download it again") from None
    except (KeyError, TypeError) as err:
        raise DataError(
            f"{path} is not an iNaturalist json index (no {err} in its images / annotations); "
            "use the official train2018.json / val2018.json"
        ) from None
    if not paths:
        raise DataError(f"{path} lists no images; download it again")
    return FileList(paths, labels, str(path))


def find_file(directory: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` (or its ``.gz``) that exists in ``directory``."""
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


# ----------------------------------------------------------------------------- classes


def check_labels(entries: FileList, num_classes: int) -> None:
    """Every label must be a class index in [0, num_classes)."""
    bad = np.flatnonzero((entries.labels < 0) | (entries.labels >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{entries.where(i)}: label {int(entries.labels[i])} is out of range for "
            f"{num_classes} classes (0..{num_classes - 1}); {len(bad)} entries are out of range. "
            "Check that the split file belongs to this dataset"
        )


def class_map_by_count(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``class_map[old] = new``, classes renumbered by descending training count (DeiT-LT
    ``KD_IMAGENETLT``: ``class_map[np.argsort(-counts)[i]] = i``; MDCS ``places_loader.py``), with
    tied classes in the order their numpy computed (see :func:`introsort_argsort`)."""
    counts = np.bincount(train_labels, minlength=num_classes)
    class_map = np.empty(num_classes, dtype=np.int64)
    class_map[introsort_argsort(-counts)] = np.arange(num_classes)
    return class_map


SMALL_QUICKSORT = 15  # numpy's constant: segments with hi - lo <= 15 are insertion-sorted


def introsort_argsort(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values)`` exactly as numpy < 1.25 computes it on every platform.

    Tied values come out in an order that depends on the sorting algorithm. numpy < 1.25 used one
    introsort everywhere (median-of-three quicksort, insertion sort for small segments, heapsort
    past a depth of 2*floor(log2 n)); newer numpy dispatches to SIMD sorts whose order of ties
    differs by version and CPU (numpy 2.4 on an AVX-512 machine places 667 of ImageNet-LT's 1000
    classes differently). DeiT-LT pins numpy 1.24.3: this reproduces its class maps (and MDCS's),
    which loading their checkpoints needs.
    """
    v = np.asarray(values).tolist()
    idx = list(range(len(v)))
    stack: list[tuple[int, int, int]] = []
    lo, hi, depth = 0, len(v) - 1, 2 * max(len(v).bit_length() - 1, 0)
    while True:
        if depth < 0:
            _heapsort(v, idx, lo, hi)
        else:
            while hi - lo > SMALL_QUICKSORT:
                mid = lo + ((hi - lo) >> 1)  # order lo, mid, hi; the median is the pivot
                if v[idx[mid]] < v[idx[lo]]:
                    idx[mid], idx[lo] = idx[lo], idx[mid]
                if v[idx[hi]] < v[idx[mid]]:
                    idx[hi], idx[mid] = idx[mid], idx[hi]
                if v[idx[mid]] < v[idx[lo]]:
                    idx[mid], idx[lo] = idx[lo], idx[mid]
                pivot = v[idx[mid]]
                i, j = lo, hi - 1
                idx[mid], idx[j] = idx[j], idx[mid]
                while True:
                    i += 1
                    while v[idx[i]] < pivot:
                        i += 1
                    j -= 1
                    while pivot < v[idx[j]]:
                        j -= 1
                    if i >= j:
                        break
                    idx[i], idx[j] = idx[j], idx[i]
                idx[i], idx[hi - 1] = idx[hi - 1], idx[i]
                depth -= 1
                if i - lo < hi - i:  # keep the smaller side, defer the larger
                    stack.append((i + 1, hi, depth))
                    hi = i - 1
                else:
                    stack.append((lo, i - 1, depth))
                    lo = i + 1
            for i in range(lo + 1, hi + 1):
                item, j = idx[i], i
                while j > lo and v[item] < v[idx[j - 1]]:
                    idx[j] = idx[j - 1]
                    j -= 1
                idx[j] = item
        if not stack:
            return np.asarray(idx, dtype=np.int64)
        lo, hi, depth = stack.pop()


def _heapsort(v: list, idx: list[int], lo: int, hi: int) -> None:
    """numpy's argsort heapsort of ``idx[lo:hi + 1]`` by ``v`` (1-based heap positions)."""
    n = hi - lo + 1

    def sift(item: int, i: int, n: int) -> None:
        j = 2 * i
        while j <= n:
            if j < n and v[idx[lo + j - 1]] < v[idx[lo + j]]:
                j += 1
            if not v[item] < v[idx[lo + j - 1]]:
                break
            idx[lo + i - 1] = idx[lo + j - 1]
            i, j = j, 2 * j
        idx[lo + i - 1] = item

    for start in range(n >> 1, 0, -1):
        sift(idx[lo + start - 1], start, n)
    while n > 1:
        item = idx[lo + n - 1]
        idx[lo + n - 1] = idx[lo]
        n -= 1
        sift(item, 1, n)


def draw_per_class(labels: np.ndarray, num_classes: int, per_class: int, seed: int, held_out: bool) -> np.ndarray:
    """Sorted indices of up to ``per_class`` random images of each class (``RandomState(seed)``,
    classes in order). When they are to be held out, each class keeps at least one image."""
    rng = np.random.RandomState(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.cumsum(np.bincount(labels, minlength=num_classes))[:-1]
    drawn = []
    for members in np.split(order, bounds):
        k = min(per_class, len(members) - 1 if held_out else len(members))
        if k > 0:
            drawn.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(drawn)) if drawn else np.zeros(0, dtype=np.int64)


# ----------------------------------------------------------------------------- datasets


@dataclass
class FileListParams(DataConfig):
    """``data.*`` of every image-file dataset: ``root`` is the directory the listed paths are
    relative to (and where the split files are looked for unless ``split_dir`` is set)."""

    # training crop; evaluation resizes to image_size / 0.875, then crops; 0 = the images' own size
    image_size: int = field(default=224, metadata=limits(0))
    reindex: bool = False  # classes by descending training count (DeiT-LT; MDCS on Places-LT)
    # used only without a validation split file: images drawn per class
    val_per_class: int = field(default=3, metadata=limits(0))
    val_held_out: bool = False  # remove the drawn validation images from training
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    split_dir: str = field(default="", metadata=NONSEMANTIC)  # "" = root
    skip_corrupt: bool = field(default=False, metadata=NONSEMANTIC)  # skip undecodable images, count them


@dataclass
class ResolvedLists:
    """The splits as training sees them: validated, validation drawn, classes re-indexed."""

    train: FileList
    val: FileList | None
    test: FileList
    num_classes: int
    fingerprint: str
    details: dict
    errors: list[str] = field(default_factory=list)  # the results would be wrong: ``build`` refuses
    warnings: list[str] = field(default_factory=list)  # worth a look: ``data verify`` reports them


def _examples(items: list[str], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


def list_problems(
    train: FileList, val: FileList | None, test: FileList, num_classes: int, counted: bool
) -> tuple[list, list]:
    """(errors, warnings) of the split lists. Errors: images listed with two labels, and classes
    without training images when the class count was ``counted`` from the labels (a gap in them);
    warnings: empty classes of a declared class count, duplicate lines, test images that are also
    training images."""
    errors, warnings = [], []
    empty = np.flatnonzero(np.bincount(train.labels, minlength=num_classes) == 0)
    if len(empty):
        (errors if counted else warnings).append(
            f"{len(empty)} of {num_classes} classes have no training image in {train.source} (classes "
            f"{', '.join(map(str, empty[:10]))}{' ...' if len(empty) > 10 else ''}); every class needs one"
            + (
                " (labels must be 0..C-1 without gaps, or set data.num_classes)"
                if counted
                else f": check that {train.source} is complete"
            )
        )
    for entries in (lst for lst in (train, val, test) if lst is not None):
        first: dict[str, int] = {}
        conflicts, duplicates = [], []
        for i, (path, label) in enumerate(zip(entries.paths, entries.labels.tolist())):
            if path not in first:
                first[path] = i
            elif entries.labels[first[path]] != label:
                conflicts.append(
                    f"{path}: label {entries.labels[first[path]]} at {entries.where(first[path])}, "
                    f"{label} at {entries.where(i)}"
                )
            else:
                duplicates.append(f"{path} ({entries.where(i)} repeats {entries.where(first[path])})")
        if conflicts:
            errors.append(f"{len(conflicts)} images have two labels in {entries.source}: {_examples(conflicts)}")
        if duplicates:
            warnings.append(
                f"{len(duplicates)} duplicate lines in {entries.source} (those images count twice): "
                f"{_examples(duplicates)}"
            )
    leaked = sorted(set(train.paths) & set(test.paths))
    if leaked:
        warnings.append(f"{len(leaked)} test images are also training images: {_examples(leaked)}")
    return errors, warnings


class FileListDataset(LTDataset):
    """Base of the image-file datasets: subclasses name their split files (``split_names``) and
    class count, and say what users must obtain by hand (``manual_steps``)."""

    Params = FileListParams
    num_classes: ClassVar[int] = 0  # 0: max label + 1 (folder_lt)
    published_stats: ClassVar[PublishedStats | None] = None
    title: ClassVar[str] = ""  # name in messages, e.g. "ImageNet-LT"

    # -- what subclasses define -----------------------------------------------------------
    def split_names(self, params: FileListParams) -> dict[str, tuple[str, ...]]:
        """Candidate file names of each split (``val`` may be absent)."""
        raise NotImplementedError

    def read_split(self, path: Path) -> FileList:
        return read_list(path)

    def optional_splits(self, params: FileListParams) -> set[str]:
        """Splits whose file may be absent (then drawn or left out); a file the user named is not."""
        return {"val"}

    def class_count(self, params: FileListParams, lists: Sequence[FileList]) -> int:
        return self.num_classes

    # -- reading --------------------------------------------------------------------------
    def split_dir(self, params: FileListParams) -> Path:
        if not (params.split_dir or params.root):
            raise DataError(
                f"{self.title}: no --root given. Pass --root DIR, the directory the paths in the "
                "split files are relative to (the split files are looked for there too, or in "
                "--set data.split_dir=DIR)"
            )
        directory = Path(params.split_dir or params.root)
        if not directory.is_dir():
            what = "data.split_dir" if params.split_dir else "--root"
            raise DataError(
                f"{what} {directory} does not exist; pass the directory that holds the "
                f"{self.title} split files (`ltbench data prepare --dataset "
                f"{self.registered_name} --root DIR` downloads them)"
            )
        return directory

    def split_paths(self, params: FileListParams) -> dict[str, Path | None]:
        directory = self.split_dir(params)
        found = {}
        for split, names in self.split_names(params).items():
            found[split] = find_file(directory, names)
            if found[split] is None and split not in self.optional_splits(params):
                raise DataError(
                    f"{self.title} {split} split file not found in {directory} (looked for "
                    f"{', '.join(names)}, also .gz). Run `ltbench data prepare --dataset {self.registered_name} "
                    "--root DIR` to download it, or point --set data.split_dir=DIR to the folder that holds it"
                )
        return found

    def resolve(self, params: FileListParams) -> ResolvedLists:
        """Read, check and arrange the split files (no image is touched)."""
        paths = self.split_paths(params)
        train = self.read_split(paths["train"])
        test = self.read_split(paths["test"])
        val = self.read_split(paths["val"]) if paths.get("val") else None
        present = [lst for lst in (train, val, test) if lst is not None]
        num_classes = self.class_count(params, present)
        for lst in present:
            check_labels(lst, num_classes)
        counted = not (self.num_classes or getattr(params, "num_classes", 0))  # the count came from the labels
        errors, warnings = list_problems(train, val, test, num_classes, counted)
        details: dict = {"split_files": {s: (None if p is None else str(p)) for s, p in paths.items()}}
        if val is None:
            train, val, details["val_split"] = self.draw_validation(train, num_classes, params)
        else:
            details["val_split"] = "file"
        if params.reindex:
            class_map = class_map_by_count(train.labels, num_classes)
            train, test = train.relabel(class_map), test.relabel(class_map)
            val = None if val is None else val.relabel(class_map)
            details["class_map"] = class_map.tolist()  # class_map[label in the files] = index used
        details["reindex"] = params.reindex
        parts = [x for lst in (train, val, test) if lst is not None for x in (lst.paths, lst.labels)]
        return ResolvedLists(train, val, test, num_classes, fingerprint(*parts), details, errors, warnings)

    def draw_validation(
        self, train: FileList, num_classes: int, params: FileListParams
    ) -> tuple[FileList, FileList | None, str]:
        """Without a validation file: (train, val, description) with ``val_per_class`` training
        images per class, left in training unless ``val_held_out``."""
        if params.val_per_class <= 0:
            return train, None, "none"
        drawn = draw_per_class(train.labels, num_classes, params.val_per_class, params.seed, params.val_held_out)
        described = f"up to {params.val_per_class} training images per class (data seed {params.seed}), "
        if params.val_held_out:
            rest = np.setdiff1d(np.arange(len(train)), drawn)
            return train.take(rest), train.take(drawn), described + "held out from training"
        return train, train.take(drawn), described + "also in training: monitoring only, not held out"

    # -- LTDataset ------------------------------------------------------------------------
    def split_labels(self, params: FileListParams) -> SplitLabels:
        lists = self.resolve(params)
        drawn = lists.details["val_split"] != "file"
        return SplitLabels(
            lists.num_classes,
            lists.train.labels,
            None if lists.val is None else lists.val.labels,
            lists.test.labels,
            lists.fingerprint,
            note=f"val split: {lists.details['val_split']}" if drawn else "",
        )

    def image_root(self, params: FileListParams) -> Path:
        if not params.root:
            raise DataError(
                f"{self.title}: pass --root DIR, the directory the paths in the split files are relative to"
            )
        root = Path(params.root)
        if not root.is_dir():
            raise DataError(
                f"--root {root} does not exist. It must be the directory the {self.title} split "
                f"files' paths are relative to; `ltbench data prepare --dataset {self.registered_name} "
                f"--root DIR` says what to put there"
            )
        return root

    def check_integrity(self, params: FileListParams) -> list[str]:
        lists = self.resolve(params)
        return lists.errors + lists.warnings

    def build(self, params: FileListParams, training: bool = True) -> LTData:
        """The dataset. For training, label problems that would make the results wrong are an error
        and the working size of ``image_size=0`` is read from the first image; ``ltbench data verify``
        (``training=False``) builds it anyway, opening no image, to check every image itself."""
        lists = self.resolve(params)
        if training and lists.errors:
            raise DataError(
                f"{self.title}: " + "; ".join(lists.errors) + f". Fix the split files (`ltbench data verify "
                f"--dataset {self.registered_name}` lists every problem)"
            )
        for warning in lists.warnings:
            log.warning("%s: %s", self.title, warning)
        root = self.image_root(params)

        def split(entries: FileList | None) -> FileSplit | None:
            if entries is None:
                return None
            return FileSplit(
                root, entries.paths, entries.labels, entries.source, entries.lines, skip_corrupt=params.skip_corrupt
            )

        train, val, test = split(lists.train), split(lists.val), split(lists.test)
        details = dict(lists.details, root=str(root))
        if params.skip_corrupt:  # the loaders fill these in as they go; run.json gets the final counts
            details["skipped_corrupt"] = {
                name: s.skipped for name, s in (("train", train), ("val", val), ("test", test)) if s is not None
            }
        return LTData(
            name=self.registered_name,
            num_classes=lists.num_classes,
            in_chans=3,
            image_size=params.image_size or (train.native_size() if training else 0),
            mean=tuple(params.mean),
            std=tuple(params.std),
            train=train,
            val=val,
            test=test,
            fingerprint=lists.fingerprint,
            train_augment="rrc_flip",
            eval_augment="resize_center_crop",
            details=details,
        )

    def published(self, params: FileListParams) -> PublishedStats | None:
        return self.published_stats

    def prepare_dir(self, params: FileListParams) -> Path:
        if not (params.split_dir or params.root):
            return super().prepare_dir(params)
        return Path(params.split_dir or params.root)

    def layout_examples(self, params: FileListParams) -> list[str]:
        """The first path of each split file that is present, to show the expected layout."""
        try:
            paths = self.split_paths(params)
        except DataError:
            return []
        examples = []
        for path in paths.values():
            if path is not None:
                with _open_text(path) as f:
                    first = next((line.split()[0] for line in f if line.strip()), None)
                if first:
                    examples.append(first)
        return examples

    def image_instructions(self, params: FileListParams, archives: str) -> str:
        """The text shared by every licensed dataset: which archives, and where the images go."""
        root = params.root or "DIR"
        text = archives.rstrip() + f"\nUnpack them under {root} so that every path listed in the split files exists "
        text += f"relative to it (--root {root})"
        examples = self.layout_examples(params)
        if examples:
            text += ", e.g.\n" + "\n".join(f"  {root}/{e}" for e in examples)
        return text + f"\nThen check with: ltbench data verify --dataset {self.registered_name} --root {root}"
