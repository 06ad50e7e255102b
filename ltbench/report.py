"""Leaderboards from finished runs: mean ± sample std over seeds, beside published numbers.

Everything is recomputed from the per-class correct/total counts and training class counts saved
in each ``run.json``, so any shot rule can be applied after the fact. Runs are averaged together
only when dataset, method, preset, configuration variant (the semantic config without the seed)
and dataset fingerprint all agree. Unfinished runs are listed apart and never averaged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from .metrics import per_class_accuracy, shot_groups, summarize
from .records import RunDir, results_root

METRICS = ("overall", "balanced", "many", "medium", "few")
PUBLISHED_METRICS = ("overall", "many", "medium", "few")
KEY = ["dataset", "method", "preset", "variant", "fingerprint"]


def _run_dirs(root: Path):
    runs = root / "runs"
    return sorted(p for p in runs.glob("*/*/*") if p.is_dir()) if runs.is_dir() else []


def collect(
    root: str | Path | None = None, split: str = "test", rule: str = "strict"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(finished runs with their metrics under ``rule``, unfinished runs) under ``root/runs``."""
    root = results_root(root)
    done, pending = [], []
    for path in _run_dirs(root):
        record_path, config_path = path / "run.json", path / "config.json"
        if record_path.exists():
            rec = json.loads(record_path.read_text())
            if split not in rec["splits"]:
                continue
            head = rec["splits"][split]["heads"]["main"]
            row = {
                "dataset": rec["dataset"],
                "method": rec["method"],
                "preset": rec["preset"],
                "variant": rec.get("variant", ""),
                "fingerprint": rec["dataset_fingerprint"],
                "seed": rec["seed"],
                "run_id": rec["run_id"],
                "path": str(path),
                "train_counts": rec["train_counts"],
                "correct": head["correct"],
                "total": head["total"],
                "image_size": rec.get("config", {}).get("data", {}).get("image_size", 0),  # 0: the dataset's own
            }
            row.update(summarize(head["correct"], head["total"], rec["train_counts"], rule))
            done.append(row)
        elif config_path.exists():
            cfg = json.loads(config_path.read_text())
            pending.append(
                {
                    "dataset": cfg["dataset_name"],
                    "method": cfg["method_name"],
                    "preset": cfg.get("preset", ""),
                    "seed": cfg["train"]["seed"],
                    "run_id": path.name,
                    "state": RunDir(path).state(),
                    "path": str(path),
                }
            )
    finished = pd.DataFrame(
        done, columns=[*KEY, "seed", "run_id", "path", "train_counts", "correct", "total", *METRICS, "image_size"]
    )
    unfinished = pd.DataFrame(pending, columns=["dataset", "method", "preset", "seed", "run_id", "state", "path"])
    return finished, unfinished


def leaderboard(finished: pd.DataFrame) -> pd.DataFrame:
    """One row per group: n, and mean, sample std (ddof=1) and 95% t-interval half-width per metric."""
    rows = []
    for key, group in finished.groupby(KEY, sort=True, dropna=False):
        row = dict(zip(KEY, key))
        row["n"] = len(group)
        row["seeds"] = ",".join(str(s) for s in sorted(group["seed"]))
        row["image_size"] = int(group["image_size"].iloc[0])  # part of the variant, so one per group
        for m in METRICS:
            values = group[m].astype(float).to_numpy()
            values = values[~np.isnan(values)]
            mean = float(values.mean()) if len(values) else math.nan
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            half = math.nan
            if len(values) > 1:
                half = float(stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values)))
            row.update({m: mean, f"{m}_std": std, f"{m}_ci95": half})
        rows.append(row)
    cols = [*KEY, "n", "seeds"] + [f"{m}{s}" for m in METRICS for s in ("", "_std", "_ci95")] + ["image_size"]
    return pd.DataFrame(rows, columns=cols)


def load_published(path: str | Path | None, root: Path) -> pd.DataFrame:
    """Published numbers: ``path``, else ``<root>/published.csv``, else the copy in this repository."""
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


def _cell(mean: float, std: float, digits: int = 2) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if std is None or math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


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
    return rows[keep]


def _display_rows(board: pd.DataFrame, published: pd.DataFrame) -> list[list[str]]:
    rows = []
    datasets = sorted(set(board["dataset"]))
    for dataset in datasets:
        ours = board[board["dataset"] == dataset]
        for _, r in ours.iterrows():
            rows.append(
                [r["dataset"], r["method"], r["preset"], r["variant"][:6], str(r["n"]), "ltbench"]
                + [_cell(r[m], r[f"{m}_std"]) for m in METRICS]
            )
        pub = comparable_published(ours, published)
        for _, p in pub.iterrows():
            rows.append(
                [
                    p["dataset"],
                    p["method"],
                    str(p["variant"]),
                    "",
                    "–",
                    f"paper ({p['source']}, {p['shot_rule']})",
                    _cell(float(p["overall"]), math.nan, 1),
                    "–",
                    *[_cell(float(p[m]), math.nan, 1) for m in ("many", "medium", "few")],
                ]
            )
    return rows


HEADERS = ["dataset", "method", "preset", "config", "n", "source", "overall", "balanced", "many", "medium", "few"]


def render(
    board: pd.DataFrame,
    unfinished: pd.DataFrame,
    published: pd.DataFrame,
    fmt: str = "md",
    rule: str = "strict",
    split: str = "test",
) -> str:
    """The leaderboard as markdown, LaTeX or CSV text."""
    if fmt == "csv":
        ours = board.assign(source="ltbench")
        pub = comparable_published(board, published)
        pub = pub.assign(preset=pub["variant"], source="paper (" + pub["source"] + ", " + pub["shot_rule"] + ")")
        table = pd.concat([ours, pub[["dataset", "method", "preset", "source", *PUBLISHED_METRICS]]], ignore_index=True)
        table["n"] = table["n"].astype("Int64")
        numbers = [c for c in board.columns[3:] if c != "image_size"]
        return table[["dataset", "method", "preset", "source", *numbers]].to_csv(index=False, float_format="%.4f")
    caption = (
        f"Top-1 accuracy (%) on the {split} split, mean ± sample std (ddof=1) over seeds; "
        f"many/medium/few by the '{rule}' shot rule; '–' = empty group. Paper rows are "
        "published numbers, not reproduced here."
    )
    rows = _display_rows(board, published)
    if fmt == "latex":
        body = tabulate(rows, headers=HEADERS, tablefmt="latex_booktabs", disable_numparse=True)
        return f"% {caption}\n{body}\n"
    if fmt != "md":
        raise ValueError(f"unknown format {fmt!r}; use md, latex or csv")
    text = tabulate(rows, headers=HEADERS, tablefmt="github", disable_numparse=True) if rows else "No finished runs."
    text = f"{text}\n\n{caption}\n"
    if len(unfinished):
        text += (
            "\nUnfinished runs (not averaged):\n\n"
            + tabulate(
                unfinished[["dataset", "method", "preset", "seed", "run_id", "state"]].values.tolist(),
                headers=["dataset", "method", "preset", "seed", "run_id", "state"],
                tablefmt="github",
                disable_numparse=True,
            )
            + "\n"
        )
    return text


def plot_per_class(finished: pd.DataFrame, out_dir: str | Path, rule: str = "strict") -> list[Path]:
    """Per-class accuracy (mean over seeds) against training count, one figure per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    versions = finished.groupby("dataset")["fingerprint"].nunique()
    for (dataset, fingerprint), runs in finished.groupby(["dataset", "fingerprint"]):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        counts = np.asarray(runs.iloc[0]["train_counts"])  # one fingerprint: one set of class counts
        for (method, preset, variant), group in runs.groupby(["method", "preset", "variant"]):
            acc = np.nanmean([per_class_accuracy(c, t) for c, t in zip(group["correct"], group["total"])], axis=0)
            ax.scatter(
                counts, 100 * acc, s=14, alpha=0.75, label=f"{method} ({preset}, config {variant[:6]}, n={len(group)})"
            )
        groups = [m for m in shot_groups(counts, rule).values() if m.any()]
        for upper, lower in zip(groups, groups[1:]):  # boundary between adjacent non-empty groups
            ax.axvline(math.sqrt(counts[upper].min() * counts[lower].max()), color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log scale)")
        ax.set_ylabel("test accuracy of the class (%)")
        ax.set_title(f"{dataset}: per-class accuracy vs class frequency ({rule} groups dashed)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        suffix = f"_{fingerprint[:8]}" if versions[dataset] > 1 else ""  # e.g. two imbalance factors
        path = out_dir / f"per_class_{dataset}{suffix}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
