"""Statistics over seeds and pairs: one leaderboard row per group (mean, sample std, 95 %
t-interval), paired-by-seed deltas with t-tests, the best cells, gaps to published numbers, the
compute each row cost (read from the records, never recomputed) and readable variant labels."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import ConfigError
from ..metrics import CalibrationBins, RuleDoesNotFitError, class_calibration_errors, shot_groups
from .records import KEY, METRICS

PUBLISHED_METRICS = ("overall", "many", "medium", "few")

# ----------------------------------------------------------------------------- readable variants

_NONSEMANTIC = {"train.seed"}


def _nonsemantic_paths() -> set[str]:
    """Config keys that never change a result (paths, devices, logging), from the field metadata."""
    from ..config import Config, DataConfig, EvalConfig, TrainConfig

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


ECE_METRICS = ("ece", "ece_many", "ece_medium", "ece_few")


def stored_calibration(path: str, split: str) -> tuple[Mapping | None, Mapping | None]:
    """(calibration bins, sparse per-class bins) of a run directory's record, None where absent."""
    with open(os.path.join(path, "run.json"), "rb") as f:
        body = json.loads(f.read())["splits"][split]
    cal, by_class = body.get("calibration"), body.get("calibration_by_class")
    return (cal if isinstance(cal, Mapping) else None), (by_class if isinstance(by_class, Mapping) else None)


def add_calibration(finished: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """``finished`` with the expected calibration error (%) of each run: ``ece`` over the split,
    ``ece_<group>`` over the images of each shot group's classes, from the calibration bins stored
    in the record (15 equal-width confidence bins of the main head; NaN where a record has none).
    Read from the records on request, not from the parse cache: per-class bins can be large."""
    rows = []
    for path, counts, rule in zip(finished["path"], finished["train_counts"], finished["rule"]):
        row = dict.fromkeys(ECE_METRICS, math.nan)
        cal, by_class = stored_calibration(path, split)
        if isinstance(cal, Mapping):
            row["ece"] = CalibrationBins(cal["count"], cal["confidence"], cal["correct"]).ece()
        if isinstance(by_class, Mapping):
            try:
                masks = shot_groups(counts, rule)
            except RuleDoesNotFitError:  # the groups are left out of the report already
                masks = {}
            bins = len(cal["count"]) if isinstance(cal, Mapping) else 15
            row.update({f"ece_{g}": v for g, v in class_calibration_errors(by_class, masks, bins).items()})
        rows.append(row)
    out = finished.assign(**{m: [r[m] for r in rows] for m in ECE_METRICS})
    out.attrs = dict(finished.attrs)
    return out


def _ci95(std: np.ndarray, n: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf(0.975, np.maximum(n - 1, 1))
        return np.where(n > 1, t * std / np.sqrt(np.maximum(n, 1)), np.nan)


def leaderboard(finished: pd.DataFrame) -> pd.DataFrame:
    """One row per group: n, the seeds, and per metric the mean, sample std (ddof=1), 95 %
    t-interval half-width and bounds. Also: ``n_expected`` (the seeds any run of the dataset has),
    the git revisions of the runs, their selection policies and a readable ``config`` label."""
    metrics = [*METRICS, *(m for m in ECE_METRICS if m in finished)]  # ECE: after add_calibration
    cols = [*KEY, "n", "seeds"] + [f"{m}{s}" for m in metrics for s in ("", "_std", "_ci95")]
    extra = ["n_expected", "config", "revisions", "selection", "rule"]
    if finished.empty:
        return pd.DataFrame(columns=[*cols, *extra, *[f"{m}_{b}" for m in metrics for b in ("lo", "hi")]])
    groups = finished.groupby(KEY, sort=True, dropna=False)
    board = groups.size().rename("n").reset_index()
    board["seeds"] = groups["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s))).to_numpy()
    means, stds, counts = groups[metrics].mean(), groups[metrics].std(ddof=1), groups[metrics].count()
    for m in metrics:
        n = counts[m].to_numpy()
        std = np.where(n > 1, stds[m].to_numpy(), np.nan)
        board[m], board[f"{m}_std"], board[f"{m}_ci95"] = means[m].to_numpy(), std, _ci95(std, n)
    expected = finished.groupby("dataset")["seed"].nunique()
    board["n_expected"] = board["dataset"].map(expected).astype(int)
    board["revisions"] = groups["git_sha"].agg(lambda s: ",".join(sorted({v[:7] for v in s if v}))).to_numpy()
    board["selection"] = groups["selection"].agg(lambda s: ",".join(sorted({v for v in s if v}))).to_numpy()
    board["rule"] = groups["rule"].first().to_numpy()
    board["image_size"] = groups["image_size"].first().to_numpy().astype(int)  # part of the variant
    board["imb_factor"] = groups["imb_factor"].first().to_numpy(dtype=float)  # part of the fingerprint
    if "untested" in finished:  # the metrics that leave out classes without test images, any seed
        board["untested"] = (
            groups["untested"].agg(lambda s: ",".join(sorted({m for v in s for m in v.split(",") if m}))).to_numpy()
        )
    configs = groups["config"].first().to_dict()
    board["config"] = describe_variants(board[cols], configs, groups["changes"].first().to_dict())
    for m in metrics:
        board[f"{m}_lo"], board[f"{m}_hi"] = board[m] - board[f"{m}_ci95"], board[m] + board[f"{m}_ci95"]
    return board


def rows_by_index(frame: pd.DataFrame | None) -> dict[Any, dict]:
    """index -> the row as a plain dict (much faster to read than pandas rows)."""
    return {} if frame is None else dict(zip(frame.index, frame.to_dict("records")))


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
    for r in rows_by_index(board).values():
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
        else [root / "published.csv", Path(__file__).resolve().parents[2] / "results" / "published.csv"]
    )
    for candidate in candidates:
        if candidate.is_file():
            return pd.read_csv(candidate)
    return pd.DataFrame(
        columns=["dataset", "method", "variant", "overall", "many", "medium", "few", "shot_rule", "source"]
    )


# published columns that say how the paper trained; the board carries each run's value
TRAINING_CONDITIONS = ("image_size", "imb_factor")


def _trained_alike(board: pd.DataFrame, published: pd.DataFrame) -> list[np.ndarray]:
    """Per published row, a mask over ``board``: the runs of its dataset and method trained as the
    row states, at its resolution (``image_size``; a run at the dataset's own size, 0, never
    matches one) and imbalance factor (``imb_factor``). An empty cell states nothing; a board that
    does not know a run's value (a dataset without an imbalance factor) matches no stated one."""
    stated = [c for c in TRAINING_CONDITIONS if c in published.columns]
    known = {c: board[c].to_numpy(dtype=float) if c in board else np.full(len(board), np.nan) for c in stated}
    datasets, methods = board["dataset"].to_numpy(), board["method"].to_numpy()
    masks = []
    for dataset, method, *values in zip(published["dataset"], published["method"], *(published[c] for c in stated)):
        mask = (datasets == dataset) & (methods == method)
        for column, value in zip(stated, values):
            if not pd.isna(value):
                mask &= known[column] == float(value)  # NaN, not known, equals nothing
        masks.append(mask)
    return masks


def comparable_published(board: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """The published rows to show beside ``board``: those with a run of the same dataset and
    method trained as the row states (:func:`_trained_alike`): a CIFAR-LT number at IF 100 says
    nothing about a run at IF 50, nor a number at 384 px about a run at 32 px."""
    keep = [mask.any() for mask in _trained_alike(board, published)]
    return published[np.array(keep, dtype=bool)]  # a boolean mask (an empty list would select no columns)


def paper_gaps(board: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Published rows of the methods on the board, with ``gap_<metric>`` = ltbench - paper.

    The ltbench side is, among the method's rows trained as the paper's row states (its imbalance
    factor and resolution, :func:`_trained_alike`), the one with preset ``paper`` if there is one,
    else the one with most seeds. Overall accuracy does not depend on a shot rule; many/medium/few
    gaps are given only where the paper's shot rule is the one the report applies to that dataset."""
    pub = comparable_published(board, published).copy()
    pub["vs"], pub["vs_fingerprint"] = "", ""
    for m in PUBLISHED_METRICS:
        pub[f"gap_{m}"] = np.nan
    for i, mask in zip(pub.index, _trained_alike(board, pub)):
        p, ours = pub.loc[i], board[mask]
        ours = ours.assign(is_paper=ours["preset"] == "paper").sort_values(["is_paper", "n"], ascending=False)
        o = ours.iloc[0]
        pub.at[i, "vs"] = f"{o['method']} {o['preset']} {o['config']}".strip()
        pub.at[i, "vs_fingerprint"] = o["fingerprint"]
        for m in PUBLISHED_METRICS:
            if m == "overall" or str(p["shot_rule"]) == o["rule"]:
                pub.at[i, f"gap_{m}"] = o[m] - float(p[m])
    return pub


# ----------------------------------------------------------------------------- compute


def fmt_seconds(seconds: float) -> str:
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
            wall=" · ".join(f"{s} {fmt_seconds(walls[s].mean())}" for s in stages if s in walls),
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
