"""Reading run records: each ``run.json`` parsed once into a compact copy (small integer arrays,
one per head), cached in a file keyed by the record's size and modification time, so a report over
thousands of records re-parses only what changed. Damaged records, records of another schema and
records without the split asked for are named and skipped, never fatal; a run id counts once per
dataset fingerprint, however many copies of its directory exist; ``finished.attrs["notes"]`` says
what was left out and why. Metrics are recomputed from the per-class counts, vectorised per dataset
fingerprint (:func:`~ltbench.metrics.summarize_many`), under any shot rule."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, LTBenchError
from ..metrics import GROUPS, RuleDoesNotFitError, shot_groups, summarize_many
from ..records import RunDir, readable_root

METRICS = ("overall", "balanced", "many", "medium", "few")
KEY = ["dataset", "method", "preset", "variant", "fingerprint"]
_EXTRA = [
    "git_sha",
    "selection",
    "device",
    "world_size",
    "wall_time",
    "compute",
    "config",
    "changes",
]  # record fields kept
CACHE_VERSION = 5

# ----------------------------------------------------------------------------- shot rules

_RULE = re.compile(r"\s*(?:([A-Za-z0-9_.-]+)=)?(index:\d+\s*,\s*\d+|[A-Za-z_]+)\s*(?:,|$)")


def parse_shot_rules(specs: str | Sequence[str] | None) -> dict[str, str]:
    """``--shot-rule`` values -> ``{dataset: rule}``; the key ``""`` applies to every other dataset.

    Each value is a comma list of ``RULE`` or ``DATASET=RULE`` items, e.g.
    ``cifar100_lt=index:36,71,imagenet_lt=strict`` (an ``index:A,B`` rule keeps its comma)."""
    if isinstance(specs, str):
        specs = [specs]
    rules: dict[str, str] = {}
    for spec in specs or ():
        pos = 0
        while pos < len(spec):
            match = _RULE.match(spec, pos)
            if not match or match.end() == pos:
                raise ConfigError(
                    f"--shot-rule {spec!r}: expected RULE or DATASET=RULE items separated by commas, "
                    "e.g. strict or cifar100_lt=index:36,71 (rules: strict, oltr, index:A,B)"
                )
            dataset, rule = match.group(1) or "", re.sub(r"\s+", "", match.group(2))
            if not rule.startswith("index:"):
                shot_groups([1], rule)  # an unknown rule name fails here, with the valid names
            rules[dataset] = rule
            pos = match.end()
    return rules


def dataset_rule(dataset: str, rules: Mapping[str, str], own: str = "strict") -> str:
    """The rule for ``dataset``: named for it, else the catch-all, else ``own``, the dataset's
    default as its runs recorded it (``run.json`` ``shot_rule``: no dataset code is imported)."""
    return rules.get(dataset, rules.get("", own))


# ----------------------------------------------------------------------------- reading records


def _compact(values: Sequence[int]) -> np.ndarray:
    """A per-class count list as the smallest unsigned integer array that holds it."""
    array = np.asarray(values, dtype=np.int64)
    if len(array) == 0 or array.min() < 0:
        return array
    top = int(array.max())
    return array.astype(
        np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.int64
    )


def _shared(array: np.ndarray, key: tuple, pool: dict) -> np.ndarray:
    """``array``, or an equal one seen before under ``key``: runs of one dataset version share
    their training counts and test totals, which are then cached once."""
    known = pool.get(key)
    if known is not None and np.array_equal(known, array):
        return known
    pool.setdefault(key, array)
    return array


def _parse(path: str, split: str, pool: dict) -> dict | str:
    """The compact record, or a note saying why the run is left out of this split's report."""
    with open(path, "rb") as f:
        rec = json.loads(f.read())
    if split not in rec["splits"]:
        has = ", ".join(sorted(rec["splits"])) or "none"
        return f"skipped {path}: the run has no {split} split (its record has: {has}); --split names another"
    fingerprint = rec["dataset_fingerprint"]
    details = rec.get("dataset_details") or {}
    heads = {
        name: (_compact(h["correct"]), _shared(_compact(h["total"]), (fingerprint, name), pool))
        for name, h in rec["splits"][split]["heads"].items()
    }
    return {
        "dataset": rec["dataset"],
        "method": rec["method"],
        "preset": rec["preset"],
        "variant": rec.get("variant", ""),
        "fingerprint": fingerprint,
        "seed": rec["seed"],
        "run_id": rec["run_id"],
        "train_counts": _shared(_compact(rec["train_counts"]), (fingerprint,), pool),
        "heads": heads,
        "git_sha": rec.get("git_sha", ""),
        "selection": rec.get("selection", {}).get("policy", ""),
        "device": rec.get("device", ""),
        "world_size": rec.get("world_size", 1),
        "wall_time": rec.get("wall_time", {}),
        "compute": rec.get("compute", {}),
        "config": rec.get("config"),
        "changes": rec.get("changes"),  # what the run changes with respect to its preset (recorded)
        "shot_rule": rec.get("shot_rule", "strict"),  # the dataset's default rule
        # the working resolution (data.image_size; 0: the dataset's own): papers' numbers need theirs
        "image_size": int(((rec.get("config") or {}).get("data") or {}).get("image_size") or 0),
        # the imbalance factor the dataset was built with (CIFAR-LT, fmnist_lt; NaN: the dataset has
        # none): a paper's CIFAR-LT number holds for one factor only
        "imb_factor": float(details["imb_factor"]) if details.get("imb_factor") is not None else np.nan,
        # images of this split that could not be decoded and were left out (data.skip_corrupt)
        "skipped": sorted(details.get("skipped_corrupt", {}).get(split) or {}),
    }


def cache_dir() -> Path:
    """``$LTBENCH_CACHE``, else ``~/.cache/ltbench``; the report keeps its parsed records under ``report/``."""
    return Path(os.environ.get("LTBENCH_CACHE") or Path.home() / ".cache" / "ltbench") / "report"


def _cache_file(root: Path, split: str) -> Path:
    key = hashlib.sha1(f"{root.resolve()}|{split}|{CACHE_VERSION}".encode()).hexdigest()[:16]
    return cache_dir() / f"{key}.pkl"


def _load_cache(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception:  # missing, torn or from another version: parse again
        return {}


def _save_cache(path: Path, entries: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(entries, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:  # a read-only home: the report still works, only slower next time
        pass


def _run_dirs(runs: str) -> list[str]:
    """``runs/<dataset>/<method>/<run_id>`` directories, sorted (os.scandir: no Path objects)."""
    found = [runs]
    for _ in range(3):
        found = [e.path for d in found for e in os.scandir(d) if e.is_dir()]
    return sorted(found)


def read_records(root: Path, split: str = "test", cache: bool = True) -> tuple[list[dict], list[Path], list[str]]:
    """(compact records of the finished runs that have ``split``, directories of unfinished runs,
    notes naming the records that were skipped: damaged, of another schema, without ``split``)."""
    runs = root / "runs"
    dirs = _run_dirs(str(runs)) if runs.is_dir() else []
    cache_path = _cache_file(root, split) if cache else None
    old = _load_cache(cache_path) if cache_path else {}
    new: dict[str, tuple] = {}
    pool: dict = {}
    records, pending, notes = [], [], []
    for path in dirs:
        record = os.path.join(path, "run.json")
        try:
            st = os.stat(record)
        except FileNotFoundError:
            if os.path.exists(os.path.join(path, "config.json")):
                pending.append(Path(path))
            continue
        stamp = (st.st_size, st.st_mtime_ns)
        hit = old.get(path)
        if hit is not None and hit[0] == stamp:
            entry = hit[1]
            if isinstance(entry, dict):  # later parses share its counts and totals
                pool.setdefault((entry["fingerprint"],), entry["train_counts"])
                for name, (_, total) in entry["heads"].items():
                    pool.setdefault((entry["fingerprint"], name), total)
        else:
            error = RunDir(Path(path)).record_error()
            if error:  # empty, torn or not a record: named, listed as unfinished, parsed again next time
                notes.append(f"skipped {error}")
                if os.path.exists(os.path.join(path, "config.json")):
                    pending.append(Path(path))
                continue
            entry = _parse(record, split, pool)
        new[path] = (stamp, entry)
        if isinstance(entry, str):  # finished, but not for this split: named, never dropped silently
            notes.append(entry)
        else:
            records.append({**entry, "path": path})
    changed = new.keys() != old.keys() or any(old[k][0] != stamp for k, (stamp, _) in new.items())
    if cache_path and changed:
        _save_cache(cache_path, new)
    return records, pending, notes


def collect(
    root: str | Path | None = None,
    split: str = "test",
    rule: str | Mapping[str, str] | None = None,
    cache: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(finished runs with their metrics, unfinished runs) under ``root/runs``.

    ``rule``: one shot rule for every dataset, or ``{dataset: rule}`` (key ``""``: the others);
    datasets without one use their own default (:attr:`LTDataset.shot_rule`)."""
    root = readable_root(root)
    rules = {"": rule} if isinstance(rule, str) else dict(rule or {})
    records, pending, notes = read_records(root, split, cache)
    seen: dict[tuple[str, str], str] = {}
    unique = []
    for rec in records:  # a copied run directory: one run id, one sample
        key = (rec["run_id"], rec["fingerprint"])
        if key in seen:
            notes.append(f"skipped {rec['path']}: a copy of run {rec['run_id']} ({seen[key]}), counted once")
            continue
        seen[key] = rec["path"]
        unique.append(rec)
        if rec["skipped"]:
            notes.append(
                f"run {rec['run_id']} ({rec['method']}, seed {rec['seed']}) was evaluated on {split} without "
                f"{len(rec['skipped'])} unreadable images (data.skip_corrupt): {', '.join(rec['skipped'][:5])}"
            )
    records = unique
    done = pd.DataFrame(
        records,
        columns=[
            *KEY,
            "seed",
            "run_id",
            "path",
            "train_counts",
            "heads",
            "shot_rule",
            "image_size",
            "imb_factor",
            *_EXTRA,
        ],
    )
    done["correct"] = [h["main"][0] for h in done["heads"]]
    done["total"] = [h["main"][1] for h in done["heads"]]
    own = dict(zip(done["dataset"], done["shot_rule"]))
    done["rule"] = done["dataset"].map({d: dataset_rule(d, rules, own[d]) for d in own})
    for m in METRICS:
        done[m] = np.nan
    for (_, rule_name), idx in done.groupby(["fingerprint", "rule"]).groups.items():
        counts = done.at[idx[0], "train_counts"]
        for start in range(0, len(idx), 1024):  # bounded memory at iNaturalist scale
            chunk = idx[start : start + 1024]
            try:
                values = summarize_many(
                    np.stack(done.loc[chunk, "correct"].tolist()),
                    np.stack(done.loc[chunk, "total"].tolist()),
                    counts,
                    rule_name,
                )
            except RuleDoesNotFitError as err:  # too few classes for this rule: the groups are left out
                dataset = done.at[idx[0], "dataset"]
                values = summarize_many(
                    np.stack(done.loc[chunk, "correct"].tolist()),
                    np.stack(done.loc[chunk, "total"].tolist()),
                    counts,
                    "strict",
                )
                values.update({g: np.full(len(chunk), np.nan) for g in GROUPS})
                note = (
                    f"{err}: many/medium/few of {dataset} are left out ('–'); give it a rule of its own with "
                    f"--shot-rule {dataset}=RULE"
                )
                notes += [] if note in notes else [note]
            for m in METRICS:
                done.loc[chunk, m] = values[m]
    _mark_untested(done, split, notes)
    unfinished = pd.DataFrame(
        [row for row in map(_pending_row, pending) if row is not None],
        columns=["dataset", "method", "preset", "seed", "run_id", "state", "path"],
    )
    done.attrs["notes"] = notes
    return done, unfinished


def _mark_untested(done: pd.DataFrame, split: str, notes: list[str]) -> None:
    """Classes with no ``split`` images: balanced accuracy and the shot-group means leave them out,
    so those cells mean something else than their column says. Each such run gets ``untested`` (the
    metrics concerned, e.g. ``balanced,few``) and the report a note naming the classes; the column
    exists only when some run has such a class."""
    marks = pd.Series("", index=done.index)
    for (fingerprint, rule_name), idx in done.groupby(["fingerprint", "rule"]).groups.items():
        empty = np.stack(done.loc[idx, "total"].tolist()) == 0
        if not empty.any():
            continue
        try:
            masks = shot_groups(done.at[idx[0], "train_counts"], rule_name)
        except RuleDoesNotFitError:
            masks = {}  # the groups are left out already
        for pos, row in zip(idx, empty):
            if row.any():
                marks[pos] = ",".join(["balanced", *(g for g, mask in masks.items() if (row & mask).any())])
        classes = np.flatnonzero(empty.any(0)).tolist()
        shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
        note = (
            f"{done.at[idx[0], 'dataset']} ({fingerprint[:8]}): class(es) {shown} have no {split} images "
            f"in {int(empty.any(1).sum())} run(s); balanced accuracy and their shot group's mean leave them out "
            "(cells marked ‡)"
        )
        notes += [] if note in notes else [note]
    if (marks != "").any():
        done["untested"] = marks


def _pending_row(path: Path) -> dict | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # named by ``ltbench status``; nothing to list here
    return {
        "dataset": cfg["dataset_name"],
        "method": cfg["method_name"],
        "preset": cfg.get("preset", ""),
        "seed": cfg["train"]["seed"],
        "run_id": path.name,
        "state": RunDir(path).state(),
        "path": str(path),
    }


# ----------------------------------------------------------------------------- code versions


def select_revisions(finished: pd.DataFrame, git: str | None = None, since: str | None = None) -> pd.DataFrame:
    """Runs made by the revision ``git`` (a SHA prefix) and/or by ``since`` or a later commit
    (``git merge-base --is-ancestor``, in the repository ltbench is installed from)."""
    keep = np.ones(len(finished), dtype=bool)
    shas = finished["git_sha"].fillna("").str.replace("-dirty", "", regex=False)
    if git:
        keep &= shas.str.startswith(git.lower()).to_numpy() & (shas != "").to_numpy()
    if since:
        where = Path(__file__).resolve().parents[1]
        check = subprocess.run(["git", "rev-parse", "--verify", f"{since}^{{commit}}"], cwd=where, capture_output=True)
        if check.returncode:
            raise LTBenchError(f"--since {since}: not a commit of the ltbench repository at {where.parent}")
        later = {}
        for sha in set(shas) - {""}:
            rc = subprocess.run(["git", "merge-base", "--is-ancestor", since, sha], cwd=where, capture_output=True)
            later[sha] = rc.returncode == 0
        keep &= np.array([later.get(s, False) for s in shas], dtype=bool)
    return finished[keep]
