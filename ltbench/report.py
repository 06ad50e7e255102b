"""Leaderboards from finished runs: mean ± sample std over seeds, beside published numbers.

Everything is recomputed from the per-class correct/total counts and training class counts saved
in each ``run.json``, so any shot rule can be applied after the fact; what a run cost (parameters,
MACs, peak memory, epochs and wall time per stage) is read from its record, never recomputed. Runs
are averaged together only when dataset, method, preset, configuration variant (the semantic config
without the seed) and dataset fingerprint all agree. Unfinished runs are listed apart.

Reading: :func:`collect` parses each ``run.json`` once and keeps a compact copy (small integer
arrays, one per head) in a cache file keyed by the file's size and modification time, so a report
over thousands of records re-parses only what changed. Damaged records are named and skipped,
never fatal; a run id counts once per dataset fingerprint, however many copies of its directory
exist; ``finished.attrs["notes"]`` says what was left out and why. Aggregation is vectorised per dataset
fingerprint (:func:`~ltbench.metrics.summarize_many`) and per group (pandas).

Presentation: :func:`leaderboard` (one row per group, with 95 % t-intervals, the seeds a row is
missing, the git revisions it mixes and a readable description of its configuration),
:func:`paired_deltas` (``--baseline``) and :func:`render` (markdown, LaTeX, CSV, JSON or a
self-contained HTML page; long or wide layout). The figures are in :mod:`ltbench.report_figures`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import math
import os
import pickle
import re
import subprocess
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from .errors import ConfigError, LTBenchError
from .metrics import GROUPS, RuleDoesNotFitError, shot_groups, summarize_many
from .records import RunDir, results_root

METRICS = ("overall", "balanced", "many", "medium", "few")
PUBLISHED_METRICS = ("overall", "many", "medium", "few")
WIDE_METRICS = ("overall", "many", "medium", "few")
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
FORMATS = ("md", "latex", "csv", "json", "html")
CACHE_VERSION = 3

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


def _parse(path: str, split: str, pool: dict) -> dict | None:
    with open(path, "rb") as f:
        rec = json.loads(f.read())
    if split not in rec["splits"]:
        return None
    fingerprint = rec["dataset_fingerprint"]
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
        # images of this split that could not be decoded and were left out (data.skip_corrupt)
        "skipped": sorted((rec.get("dataset_details") or {}).get("skipped_corrupt", {}).get(split) or {}),
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
    notes naming the damaged records that were skipped)."""
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
            if entry is not None:  # later parses share its counts and totals
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
        if entry is not None:
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
    root = results_root(root)
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
        records, columns=[*KEY, "seed", "run_id", "path", "train_counts", "heads", "shot_rule", "image_size", *_EXTRA]
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
    unfinished = pd.DataFrame(
        [row for row in map(_pending_row, pending) if row is not None],
        columns=["dataset", "method", "preset", "seed", "run_id", "state", "path"],
    )
    done.attrs["notes"] = notes
    return done, unfinished


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
        where = Path(__file__).resolve().parent
        check = subprocess.run(["git", "rev-parse", "--verify", f"{since}^{{commit}}"], cwd=where, capture_output=True)
        if check.returncode:
            raise LTBenchError(f"--since {since}: not a commit of the ltbench repository at {where.parent}")
        later = {}
        for sha in set(shas) - {""}:
            rc = subprocess.run(["git", "merge-base", "--is-ancestor", since, sha], cwd=where, capture_output=True)
            later[sha] = rc.returncode == 0
        keep &= np.array([later.get(s, False) for s in shas], dtype=bool)
    return finished[keep]


# ----------------------------------------------------------------------------- readable variants

_NONSEMANTIC = {"train.seed"}


def _nonsemantic_paths() -> set[str]:
    """Config keys that never change a result (paths, devices, logging), from the field metadata."""
    from .config import Config, DataConfig, EvalConfig, TrainConfig

    out = set(_NONSEMANTIC)
    for prefix, cls in (("", Config), ("train.", TrainConfig), ("eval.", EvalConfig), ("data.", DataConfig)):
        out |= {prefix + f.name for f in dataclasses.fields(cls) if not f.metadata.get("semantic", True)}
    return out


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _value(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v)


def describe_variants(
    board: pd.DataFrame, configs: Mapping[tuple, Any], changes: Mapping[tuple, Any] | None = None
) -> list[str]:
    """What each row's configuration changes with respect to its preset, e.g. ``stages.mgp.epochs=0``.

    Read from the ``changes`` each run recorded (its semantic settings that differ from the preset
    when it ran; "" when none), so no method code is imported. Rows whose runs predate that record
    are compared with the other rows of their dataset, method and preset, and a row without a
    stored config keeps the first 6 digits of its variant hash."""
    skip = _nonsemantic_paths() | {"method_name", "dataset_name"}
    keys = list(zip(*(board[k] for k in KEY)))
    stored = [configs.get(key) for key in keys]
    recorded = [(changes or {}).get(key) for key in keys]
    labels: list[str | None] = []
    for (*_, variant, _), config, change in zip(keys, stored, recorded):
        if isinstance(change, Mapping):
            labels.append(", ".join(f"{k}={_value(v)}" for k, v in sorted(change.items())))
        elif not isinstance(config, Mapping):
            labels.append(variant[:6])
        else:
            labels.append(None)
    # siblings: keys whose values differ between the stored configs of one dataset, method, preset
    siblings: dict[tuple, list[int]] = {}
    for i, (dataset, method, preset, _, _) in enumerate(keys):
        if labels[i] is None:
            siblings.setdefault((dataset, method, preset), []).append(i)
    for todo in siblings.values():
        flat = {i: {k: _value(v) for k, v in _flatten(stored[i]).items() if k not in skip} for i in todo}
        names = sorted({k for f in flat.values() for k in f})
        varying = [k for k in names if len({f.get(k) for f in flat.values()}) > 1]
        for i in todo:
            labels[i] = ", ".join(f"{k}={flat[i].get(k)}" for k in varying) or keys[i][3][:6]
    return [str(label) for label in labels]


# ----------------------------------------------------------------------------- aggregation


def _ci95(std: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf(0.975, np.maximum(n - 1, 1))
        return np.where(n > 1, t * std / np.sqrt(np.maximum(n, 1)), np.nan)


def leaderboard(finished: pd.DataFrame) -> pd.DataFrame:
    """One row per group: n, the seeds, and per metric the mean, sample std (ddof=1), 95 %
    t-interval half-width and bounds. Also: ``n_expected`` (the seeds any run of the dataset has),
    the git revisions of the runs, their selection policies and a readable ``config`` label."""
    cols = [*KEY, "n", "seeds"] + [f"{m}{s}" for m in METRICS for s in ("", "_std", "_ci95")]
    extra = ["n_expected", "config", "revisions", "selection", "rule"]
    if finished.empty:
        return pd.DataFrame(columns=[*cols, *extra, *[f"{m}_{b}" for m in METRICS for b in ("lo", "hi")]])
    groups = finished.groupby(KEY, sort=True, dropna=False)
    board = groups.size().rename("n").reset_index()
    board["seeds"] = groups["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s))).to_numpy()
    means, stds, counts = groups[list(METRICS)].mean(), groups[list(METRICS)].std(ddof=1), groups[list(METRICS)].count()
    for m in METRICS:
        n = counts[m].to_numpy()
        std = np.where(n > 1, stds[m].to_numpy(), np.nan)
        board[m], board[f"{m}_std"], board[f"{m}_ci95"] = means[m].to_numpy(), std, _ci95(std, n)
    expected = finished.groupby("dataset")["seed"].nunique()
    board["n_expected"] = board["dataset"].map(expected).astype(int)
    board["revisions"] = groups["git_sha"].agg(lambda s: ",".join(sorted({v[:7] for v in s if v}))).to_numpy()
    board["selection"] = groups["selection"].agg(lambda s: ",".join(sorted({v for v in s if v}))).to_numpy()
    board["rule"] = groups["rule"].first().to_numpy()
    board["image_size"] = groups["image_size"].first().to_numpy().astype(int)  # part of the variant
    configs = groups["config"].first().to_dict()
    board["config"] = describe_variants(board[cols], configs, groups["changes"].first().to_dict())
    for m in METRICS:
        board[f"{m}_lo"], board[f"{m}_hi"] = board[m] - board[f"{m}_ci95"], board[m] + board[f"{m}_ci95"]
    return board


def recipe_similarity(config: Mapping | None, other: Mapping | None) -> int:
    """How many settings two runs' recipes share: equal ``model.*`` values, plus the most equal
    values between any stage of ``config`` and any stage of ``other`` (stage names differ between
    methods: LiVT's ``bft`` is the stage that compares with CE's ``train``). 0 without configs."""
    if not isinstance(config, Mapping) or not isinstance(other, Mapping):
        return 0
    skip = _nonsemantic_paths()
    model_a, model_b = _flatten(config.get("model") or {}), _flatten(other.get("model") or {})
    same = sum(1 for k, v in model_a.items() if f"model.{k}" not in skip and k in model_b and model_b[k] == v)
    stages_a = {n: _flatten(st) for n, st in (config.get("stages") or {}).items()}
    stages_b = {n: _flatten(st) for n, st in (other.get("stages") or {}).items()}
    best = 0
    for a in stages_a.values():
        for b in stages_b.values():
            best = max(best, sum(1 for k, v in a.items() if k in b and b[k] == v))
    return same + best


def paired_deltas(finished: pd.DataFrame, board: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per board row, per metric: mean of (row - baseline) over the seeds both have, and the
    two-sided paired t-test p-value (scipy ``ttest_rel``; NaN below two pairs).

    ``baseline`` is ``METHOD`` or ``METHOD:PRESET``. It is looked up within the row's dataset
    fingerprint only. Among several baseline rows (``ce --preset cpu``, ``cpu_ride``, ``cpu_vit``)
    each row is paired with the one whose recipe is closest to its own (:func:`recipe_similarity`:
    the same backbone settings and training stage, e.g. RIDE with the CE row on RIDE's schedule),
    then the one with the row's preset, then the one with most seeds; the ``baseline`` column
    says which."""
    method, _, preset = baseline.partition(":")
    if method not in set(finished["method"]):
        raise ConfigError(f"--baseline {baseline}: no finished run of method {method!r} in these results")
    seeds_of = {key: g.set_index("seed")[list(METRICS)] for key, g in finished.groupby(KEY, dropna=False)}
    bases = board[(board["method"] == method) & ((board["preset"] == preset) if preset else True)]
    bases_of = dict(list(bases.groupby(["dataset", "fingerprint"])))
    configs = finished.groupby(KEY, dropna=False)["config"].first().to_dict()
    out = []
    for r in _rows(board).values():
        cands = bases_of.get((r["dataset"], r["fingerprint"]), bases.iloc[0:0])
        row: dict[str, Any] = {"baseline": "", "pairs": 0, "is_baseline": False}
        if len(cands):
            mine = configs.get(tuple(r[k] for k in KEY))
            close = [recipe_similarity(mine, configs.get(tuple(c[k] for k in KEY))) for _, c in cands.iterrows()]
            cands = cands.assign(close=close, same=cands["preset"] == r["preset"]).sort_values(
                ["close", "same", "n", "preset", "config"], ascending=[False, False, False, True, True]
            )
            base = cands.iloc[0]
            a, b = seeds_of[tuple(r[k] for k in KEY)], seeds_of[tuple(base[k] for k in KEY)]
            common = a.index.intersection(b.index)
            row.update(baseline=f"{base['method']} {base['preset']} {base['config']}".strip(), pairs=len(common))
            row["is_baseline"] = all(r[k] == base[k] for k in KEY)
            for m in METRICS:
                diff = (a.loc[common, m] - b.loc[common, m]).to_numpy(dtype=float)
                row[f"delta_{m}"] = float(diff.mean()) if len(diff) else math.nan
                p = math.nan
                if len(diff) > 1 and not row["is_baseline"]:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # constant differences: scipy says NaN
                        p = float(stats.ttest_rel(a.loc[common, m], b.loc[common, m]).pvalue)
                row[f"p_{m}"] = p
        out.append(row)
    cols = ["baseline", "pairs", "is_baseline", *[f"{k}_{m}" for m in METRICS for k in ("delta", "p")]]
    return pd.DataFrame(out, columns=cols, index=board.index)


def best_cells(board: pd.DataFrame, metrics: Iterable[str] = METRICS) -> set[tuple[int, str]]:
    """(row index, metric) of each column's best row within one dataset fingerprint, kept only when
    its 95 % interval lies entirely above the runner-up's (both need two seeds or more)."""
    best = set()
    for _, rows in board.groupby(["dataset", "fingerprint"]):
        for m in metrics:
            ranked = rows[rows[m].notna()].sort_values(m, ascending=False)
            if len(ranked) < 2:
                continue
            first, second = ranked.iloc[0], ranked.iloc[1]
            if first[f"{m}_lo"] > second[f"{m}_hi"]:  # NaN bounds (one seed) compare False
                best.add((ranked.index[0], m))
    return best


def load_published(path: str | Path | None, root: Path) -> pd.DataFrame:
    """Published numbers: ``path``, else ``<root>/published.csv``, else the copy in this repository.
    An optional ``selection`` column says how each paper chose the reported checkpoint."""
    candidates = (
        [Path(path)]
        if path
        else [root / "published.csv", Path(__file__).resolve().parent.parent / "results" / "published.csv"]
    )
    for candidate in candidates:
        if candidate.is_file():
            return pd.read_csv(candidate)
    return pd.DataFrame(
        columns=["dataset", "method", "variant", "overall", "many", "medium", "few", "shot_rule", "source"]
    )


def comparable_published(board: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """The published rows to show beside ``board``: same dataset and method, and, where a row gives
    the paper's training resolution (``image_size``), at least one run of that method trained at
    it (``data.image_size``; a run at the dataset's own size, 0, never matches one)."""
    rows = published[published["dataset"].isin(board["dataset"]) & published["method"].isin(board["method"])]
    if "image_size" not in rows.columns or "image_size" not in board.columns:
        return rows
    trained = set(zip(board["dataset"], board["method"], board["image_size"].astype(int)))
    keep = [
        pd.isna(size) or (dataset, method, int(size)) in trained
        for dataset, method, size in zip(rows["dataset"], rows["method"], rows["image_size"])
    ]
    return rows[np.array(keep, dtype=bool)]  # a boolean mask (an empty list would select no columns)


def paper_gaps(board: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Published rows of the methods on the board, with ``gap_<metric>`` = ltbench - paper.

    The ltbench side is the method's row with preset ``paper`` if there is one, else its row with
    most seeds. Overall accuracy does not depend on a shot rule; many/medium/few gaps are given only
    where the paper's shot rule is the one the report applies to that dataset."""
    pub = comparable_published(board, published).copy()
    pub["vs"], pub["vs_fingerprint"] = "", ""
    for m in PUBLISHED_METRICS:
        pub[f"gap_{m}"] = np.nan
    for i, p in pub.iterrows():
        ours = board[(board["dataset"] == p["dataset"]) & (board["method"] == p["method"])]
        ours = ours.assign(is_paper=ours["preset"] == "paper").sort_values(["is_paper", "n"], ascending=False)
        o = ours.iloc[0]
        pub.at[i, "vs"] = f"{o['method']} {o['preset']} {o['config']}".strip()
        pub.at[i, "vs_fingerprint"] = o["fingerprint"]
        for m in PUBLISHED_METRICS:
            if m == "overall" or str(p["shot_rule"]) == o["rule"]:
                pub.at[i, f"gap_{m}"] = o[m] - float(p[m])
    return pub


# ----------------------------------------------------------------------------- compute


def _fmt_seconds(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def compute_table(finished: pd.DataFrame, board: pd.DataFrame) -> pd.DataFrame:
    """Per board row, from the records (means over seeds): epochs and wall time per stage, device and
    world size, parameters (total, trainable), MACs per image (all heads; routed) and peak memory."""
    rows = []
    groups = dict(list(finished.groupby(KEY, dropna=False)))
    for _, r in board.iterrows():
        g = groups[tuple(r[k] for k in KEY)]
        compute = [c or {} for c in g["compute"]]
        walls = pd.DataFrame([w or {} for w in g["wall_time"]])
        first = next((c for c in compute if c), {})
        stages = list((first.get("epochs") or {}).keys()) or [c for c in walls.columns if c != "total"]

        def mean(values: list) -> float:
            values = [float(v) for v in values if v is not None]
            return float(np.mean(values)) if values else math.nan

        row = {k: r[k] for k in KEY}
        row.update(
            config=r["config"],
            n=r["n"],
            epochs=" · ".join(f"{s} {first['epochs'][s]}" for s in stages) if first.get("epochs") else "–",
            wall=" · ".join(f"{s} {_fmt_seconds(walls[s].mean())}" for s in stages if s in walls),
            wall_total_s=walls["total"].mean() if "total" in walls else math.nan,
            device=", ".join(sorted({f"{d} ×{w}" for d, w in zip(g["device"], g["world_size"]) if d})) or "–",
            params=mean([c.get("params", {}).get("total") for c in compute]),
            trainable=mean([c.get("params", {}).get("trainable") for c in compute]),
            macs=mean([c.get("macs_per_image", {}).get("all") for c in compute]),
            macs_routed=mean([c.get("macs_per_image", {}).get("routed") for c in compute]),
            peak_mib=mean([c.get("peak_memory", {}).get("mib") for c in compute]),
            memory_kind=", ".join(sorted({c.get("peak_memory", {}).get("kind", "") for c in compute} - {""})),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _compute_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    def num(v: float, scale: float, digits: int) -> str:
        return "–" if v is None or math.isnan(v) else f"{v / scale:.{digits}f}"

    headers = ["dataset", "method", "preset", "config", "n", "epochs", "wall / run", "device × world"]
    headers += ["params (M)", "trainable (M)", "GMACs / img", "routed", "peak mem (MiB)"]
    rows = [
        [
            r["dataset"],
            r["method"],
            r["preset"],
            r["config"],
            str(r["n"]),
            r["epochs"],
            f"{_fmt_seconds(r['wall_total_s'])} ({r['wall']})" if r["wall"] else _fmt_seconds(r["wall_total_s"]),
            r["device"],
            num(r["params"], 1e6, 3),
            num(r["trainable"], 1e6, 3),
            num(r["macs"], 1e9, 4),
            num(r["macs_routed"], 1e9, 4),
            num(r["peak_mib"], 1, 0),
        ]
        for _, r in table.iterrows()
    ]
    return headers, rows


# ----------------------------------------------------------------------------- cells and tables


@dataclasses.dataclass
class Table:
    """A rendered-format-independent table: header, rows of text cells, bold cells, column groups."""

    headers: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = dataclasses.field(default_factory=set)
    groups: list[tuple[str, int]] | None = None  # (label, span) over the columns, wide layout


def _num(value: float, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _signed(value: float, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.{digits}f}".replace("-", "−")


def _cell(r: Mapping, m: str, ci: bool, delta: Mapping | None = None) -> str:
    mean = r[m]
    if mean is None or math.isnan(mean):
        return "–"
    if ci:
        text = _num(mean, 2) if math.isnan(r[f"{m}_ci95"]) else f"{mean:.2f} [{r[f'{m}_lo']:.2f}, {r[f'{m}_hi']:.2f}]"
    else:
        std = r[f"{m}_std"]
        text = f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    if delta is not None and delta.get("pairs") and not delta.get("is_baseline"):
        p = delta[f"p_{m}"]
        text += f" (Δ {_signed(delta[f'delta_{m}'], 2)}, p={'–' if math.isnan(p) else f'{p:.3f}'})"
    return text


def _n(r: Mapping) -> str:
    n = str(r["n"]) if r["n"] >= r["n_expected"] else f"{r['n']}/{r['n_expected']}"
    return n + ("†" if "," in r["revisions"] else "")


def _paper_cell(p: Mapping, m: str) -> str:
    value = float(p[m]) if m in p else math.nan
    if math.isnan(value):
        return "–"
    gap = p.get(f"gap_{m}", math.nan)
    return f"{value:.1f}" + ("" if gap is None or math.isnan(gap) else f" ({_signed(gap, 1)})")


HEADERS = ["dataset", "method", "preset", "config", "n", "source", "overall", "balanced", "many", "medium", "few"]


def _rows(frame: pd.DataFrame | None) -> dict[Any, dict]:
    """index -> the row as a plain dict (much faster to read than pandas rows)."""
    return {} if frame is None else dict(zip(frame.index, frame.to_dict("records")))


def long_table(board: pd.DataFrame, pub: pd.DataFrame, deltas: pd.DataFrame | None, ci: bool) -> Table:
    """One row per ltbench group and per published number, datasets one after the other."""
    rows, bold = [], set()
    best = best_cells(board)
    records, delta_of = _rows(board), _rows(deltas)
    for dataset in sorted(set(board["dataset"])):
        for i in board.index[board["dataset"] == dataset]:
            r, delta = records[i], delta_of.get(i)
            source = "ltbench (baseline)" if delta and delta["is_baseline"] else "ltbench"
            for j, m in enumerate(METRICS):
                if (i, m) in best:
                    bold.add((len(rows), 6 + j))
            rows.append(
                [r["dataset"], r["method"], r["preset"], r["config"], _n(r), source]
                + [_cell(r, m, ci, delta) for m in METRICS]
            )
        for _, p in pub[pub["dataset"] == dataset].iterrows():
            rows.append(
                [p["dataset"], p["method"], str(p["variant"]), "", "–", f"paper ({p['source']}, {p['shot_rule']})"]
                + [_paper_cell(p, "overall"), "–", *[_paper_cell(p, m) for m in GROUPS]]
            )
    return Table(list(HEADERS), rows, bold)


def _column_groups(board: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset, fingerprint) column groups; the fingerprint is shown when a dataset has several."""
    pairs = sorted(set(zip(board["dataset"], board["fingerprint"])))
    several = {d for d in {d for d, _ in pairs} if sum(1 for e, _ in pairs if e == d) > 1}
    return [(d, f"{d} ({f[:8]})" if d in several else d) for d, f in pairs]


def wide_table(board: pd.DataFrame, pub: pd.DataFrame, deltas: pd.DataFrame | None, ci: bool) -> Table:
    """Rows are methods (preset and config); column groups are datasets × overall/many/medium/few."""
    pairs = sorted(set(zip(board["dataset"], board["fingerprint"])))
    labels = dict(zip(pairs, (label for _, label in _column_groups(board))))
    best = best_cells(board, WIDE_METRICS)
    width = len(WIDE_METRICS)
    headers = ["method", "preset", "config"] + [m for _ in pairs for m in WIDE_METRICS]
    records, delta_of = _rows(board), _rows(deltas)
    by_key: dict[tuple, list] = {}
    for i, r in records.items():
        by_key.setdefault((r["method"], r["preset"], r["config"]), []).append(i)
    column = {p: 3 + width * k for k, p in enumerate(pairs)}
    rows, bold = [], set()
    for (method, preset, config), mine in sorted(by_key.items()):
        row = [method, preset, config] + ["" for _ in pairs for _ in WIDE_METRICS]
        for i in mine:
            r, delta = records[i], delta_of.get(i)
            col = column[r["dataset"], r["fingerprint"]]
            for j, m in enumerate(WIDE_METRICS):
                row[col + j] = _cell(r, m, ci, delta)
                if (i, m) in best:
                    bold.add((len(rows), col + j))
            if r["n"] < r["n_expected"] or "," in r["revisions"]:
                row[col] += f" (n={_n(r)})"
        rows.append(row)
    for (method, variant), ps in pub.groupby(["method", "variant"], sort=True):
        row = [method, "paper", str(variant)] + ["" for _ in pairs for _ in WIDE_METRICS]
        for _, p in ps.iterrows():  # under the dataset version of the row its gap refers to
            col = 3 + width * pairs.index((p["dataset"], p["vs_fingerprint"]))
            row[col : col + width] = [_paper_cell(p, m) for m in WIDE_METRICS]
        rows.append(row)
    groups = [("", 3)] + [(labels[p], width) for p in pairs]
    return Table(headers, rows, bold, groups)


# ----------------------------------------------------------------------------- formats


def _md(table: Table) -> str:
    headers = table.headers
    if table.groups:  # markdown has one header row: prefix the group to its first column
        headers, col = list(headers), 0
        for label, span in table.groups:
            if label:
                headers[col : col + span] = [f"{label} {h}" for h in headers[col : col + span]]
            col += span
    rows = [[f"**{c}**" if (i, j) in table.bold else c for j, c in enumerate(row)] for i, row in enumerate(table.rows)]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


_LATEX_AFTER = {"\x01": r"\textbf{", "\x02": "}", "Δ": r"$\Delta$", "†": r"$^\dagger$", "−": "$-$"}


def _latex(table: Table) -> str:
    rows = [
        [f"\x01{c}\x02" if (i, j) in table.bold else c for j, c in enumerate(row)] for i, row in enumerate(table.rows)
    ]
    body = tabulate(rows, headers=table.headers, tablefmt="latex_booktabs", disable_numparse=True)
    if table.groups:  # a \multicolumn row over each dataset, with \cmidrule under it
        cells, rules, col = [], [], 1
        for label, span in table.groups:
            cells.append(
                rf"\multicolumn{{{span}}}{{c}}{{{_latex_escape(label)}}}" if label else " & ".join([""] * span)
            )
            if label:
                rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        body = body.replace("\\toprule\n", "\\toprule\n" + " & ".join(cells) + " \\\\\n" + " ".join(rules) + "\n", 1)
    for k, v in _LATEX_AFTER.items():
        body = body.replace(k, v)
    return body


def _latex_escape(text: str) -> str:
    return "".join({"_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#"}.get(c, c) for c in text)


def _html_table(table: Table, caption: str) -> str:
    out = [f"<table class='sortable'><caption>{html.escape(caption)}</caption><thead>"]
    if table.groups:
        out.append("<tr>" + "".join(f"<th colspan='{s}'>{html.escape(g)}</th>" for g, s in table.groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.headers) + "</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        cells = (f"<b>{html.escape(c)}</b>" if (i, j) in table.bold else html.escape(c) for j, c in enumerate(row))
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_HTML_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0 2em; font-size: 14px; }}
caption {{ caption-side: bottom; text-align: left; color: #555; padding-top: .5em; max-width: 70em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; white-space: nowrap; }}
thead th {{ border-bottom: 2px solid #444; cursor: pointer; }}
img {{ max-width: 48em; display: block; margin: 1em 0; }}
</style></head><body>
<h1>{title}</h1>
"""

# click a header to sort by that column (numbers by their leading value), click again to reverse
_HTML_SCRIPT = """<script>
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[table.tHead.rows.length - 1].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (r) { var t = r.cells[col].textContent, v = parseFloat(t.replace('\\u2212', '-'));
                               return isNaN(v) ? t : v; };
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }
        return x < y ? -dir : x > y ? dir : 0; });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
</script>
"""


def _html_page(sections: list[tuple[str, Table, str]], notes: list[str], images: list[tuple[str, bytes]]) -> str:
    parts = [_HTML_HEAD.format(title="ltbench leaderboard")]
    for title, table, caption in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>\n{_html_table(table, caption)}")
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for title, png in images:
        data = base64.b64encode(png).decode()
        parts.append(
            f"<h3>{html.escape(title)}</h3>\n<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
        )
    parts.append(_HTML_SCRIPT + "</body></html>\n")
    return "\n".join(parts)


def _rules_text(board: pd.DataFrame) -> str:
    rules = dict(zip(board["dataset"], board["rule"]))
    if len(set(rules.values())) == 1:
        return f"the '{next(iter(rules.values()))}' shot rule"
    return "the shot rule of each dataset (" + ", ".join(f"{d} '{r}'" for d, r in sorted(rules.items())) + ")"


def _pairings(board: pd.DataFrame, deltas: pd.DataFrame | None) -> str:
    """``row -> baseline row`` for the compared rows of each dataset version whose rows were paired
    with more than one baseline row (there, which one each row got is worth saying)."""
    if deltas is None:
        return ""
    frame = board[["dataset", "fingerprint"]].join(deltas[["baseline", "is_baseline"]])
    chosen = frame[frame["baseline"] != ""].groupby(["dataset", "fingerprint"])["baseline"].nunique()
    pairs = []
    for i, r in board.iterrows():
        d = deltas.loc[i]
        if chosen.get((r["dataset"], r["fingerprint"]), 0) > 1 and d["baseline"] and not d["is_baseline"]:
            pairs.append(f"{' '.join(str(r[k]) for k in ('method', 'preset', 'config') if r[k])} → {d['baseline']}")
    return "; ".join(pairs)


_POLICY = {"last": "the last epoch", "best-val": "the best epoch on the val split"}


def _caption(
    board: pd.DataFrame,
    pub: pd.DataFrame,
    split: str,
    ci: bool,
    baseline: str | None,
    deltas: pd.DataFrame | None = None,
) -> str:
    spread = "mean [95 % t-interval] over seeds" if ci else "mean ± sample std (ddof=1) over seeds"
    text = (
        f"Top-1 accuracy (%) on the {split} split, {spread}; "
        f"many/medium/few by {_rules_text(board)}; '–' = empty group. Paper rows are "
        "published numbers, not reproduced here."
    )
    extras = []
    if (board["n"] < board["n_expected"]).any():
        extras.append("n = k/K: the row has k of the K seeds its dataset's other rows have")
    if board["revisions"].str.contains(",").any():
        extras.append("† the row's runs come from several git revisions (select with --git SHA or --since REV)")
    if baseline:
        extras.append(
            f"Δ: mean difference to the {baseline} row of the same dataset version, paired by seed; "
            "p: two-sided paired t-test"
        )
        paired = _pairings(board, deltas)
        if paired:
            extras.append(f"Each row is paired with the {baseline} row of the closest recipe: {paired}")
    if best_cells(board):
        extras.append("bold: the best row of a column whose 95 % interval lies above the runner-up's")
    if len(pub):
        extras.append(
            "(±x) after a paper number: ltbench − paper, for the ltbench row of that method "
            "(its paper preset if run); many/medium/few only where the shot rules match"
        )
        policies = sorted({_POLICY.get(p, p) for s in board["selection"] for p in s.split(",") if p})
        stated = pub.dropna(subset=["selection"]) if "selection" in pub else pub.iloc[0:0]
        papers = [
            f"{s} ({d} {m})" for (s, d, m) in sorted(zip(stated["selection"], stated["dataset"], stated["method"]))
        ]
        if len(stated) < len(pub):
            papers.append(
                f"{'the others' if papers else 'all'}: not recorded (most papers report the best epoch on the test set)"
            )
        ours = " or ".join(policies) or "the last epoch"
        extras.append(f"Model selection: ltbench rows use {ours}; papers: {'; '.join(papers)}")
    return text + ("" if not extras else " " + ". ".join(extras) + ".")


def render(
    board: pd.DataFrame,
    unfinished: pd.DataFrame,
    published: pd.DataFrame,
    fmt: str = "md",
    split: str = "test",
    *,
    layout: str = "long",
    ci: bool = False,
    deltas: pd.DataFrame | None = None,
    baseline: str | None = None,
    compute: pd.DataFrame | None = None,
    images: list[tuple[str, bytes]] | None = None,
) -> str:
    """The leaderboard as markdown, LaTeX, CSV, JSON or a self-contained HTML page (its figures
    embedded from ``images``); ``deltas`` from :func:`paired_deltas`, ``compute`` from
    :func:`compute_table`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
    if layout not in ("long", "wide"):
        raise ConfigError(f"unknown layout {layout!r}; use long or wide")
    pub = paper_gaps(board, published)
    if fmt == "csv":
        return _csv(board, pub, deltas, ci)
    if fmt == "json":
        return _json(board, pub, unfinished, deltas, compute, split)
    if board.empty:
        text = "No finished runs."
        return f"<p>{text}</p>\n" if fmt == "html" else f"{text}\n\n"
    caption = _caption(board, pub, split, ci, baseline, deltas)
    table = (wide_table if layout == "wide" else long_table)(board, pub, deltas, ci)
    compute_rows = _compute_rows(compute) if compute is not None else None
    pending = None
    if len(unfinished):
        cols = ["dataset", "method", "preset", "seed", "run_id", "state"]
        pending = Table(cols, [[str(v) for v in row] for row in unfinished[cols].values.tolist()])
    if fmt == "latex":
        text = f"% {caption}\n{_latex(table)}\n"
        if compute_rows:
            text += f"% Compute per run (means over seeds)\n{_latex(Table(*compute_rows))}\n"
        return text
    if fmt == "html":
        sections = [("Leaderboard", table, caption)]
        if compute_rows:
            sections.append(("Compute per run (means over seeds)", Table(*compute_rows), ""))
        if pending:
            sections.append(("Unfinished runs (not averaged)", pending, ""))
        return _html_page(sections, [], images or [])
    text = f"{_md(table)}\n\n{caption}\n"
    if compute_rows:
        text += "\nCompute per run (means over seeds):\n\n" + _md(Table(*compute_rows)) + "\n"
    if pending:
        text += "\nUnfinished runs (not averaged):\n\n" + _md(pending) + "\n"
    return text


def _csv(board: pd.DataFrame, pub: pd.DataFrame, deltas: pd.DataFrame | None, ci: bool) -> str:
    base = ["dataset", "method", "preset", "source", "variant", "fingerprint", "n", "seeds"]
    base += [f"{m}{s}" for m in METRICS for s in ("", "_std", "_ci95")]
    ours = board.assign(source="ltbench")
    extra = ["config", "n_expected", "revisions"]
    if ci:
        extra += [f"{m}_{b}" for m in METRICS for b in ("lo", "hi")]
    if deltas is not None:
        ours = pd.concat([ours, deltas.drop(columns=["is_baseline"])], axis=1)
        extra += list(deltas.columns.drop("is_baseline"))
    gaps = [f"gap_{m}" for m in PUBLISHED_METRICS]
    paper = pub.assign(preset=pub["variant"], source="paper (" + pub["source"] + ", " + pub["shot_rule"] + ")")
    paper = paper[["dataset", "method", "preset", "source", *PUBLISHED_METRICS, *gaps]]
    table = pd.concat([ours, paper], ignore_index=True).reindex(columns=[*base, *extra, *gaps])
    for col in ("n", "n_expected", "pairs"):
        if col in table:
            table[col] = table[col].astype("Int64")
    return table.to_csv(index=False, float_format="%.4f")


def _plain(value: Any) -> Any:
    """A JSON value: NaN -> null, numpy scalars -> Python, floats to 10 decimals (the last bits
    depend on the order of summation, which is not part of the result)."""
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 10)
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _json(board, pub, unfinished, deltas, compute, split) -> str:
    rows = board.drop(columns=[]) if deltas is None else pd.concat([board, deltas], axis=1)
    out = {
        "split": split,
        "shot_rules": dict(sorted(zip(board["dataset"], board["rule"]))),
        "rows": _records(rows),
        "published": _records(pub),
        "unfinished": _records(unfinished.drop(columns=["path"], errors="ignore")),
    }
    if compute is not None:
        out["compute"] = _records(compute)
    return json.dumps(out, indent=1, sort_keys=False) + "\n"
