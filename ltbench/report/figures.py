"""The report's figures (matplotlib, saved as PNG and PDF, or embedded in the HTML page).

- per-class accuracy (mean over seeds) against the class's training count, shot-group boundaries
  dashed, one figure per dataset version;
- grouped bars of overall / many / medium / few per leaderboard row, error bars = std over seeds;
- for rows whose runs store several ``expert*`` heads (multi-expert methods), each expert's
  accuracy by shot group beside the combined prediction.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..metrics import GROUPS, per_class_accuracy, shot_groups, summarize
from .records import KEY
from .stats import add_calibration, stored_calibration


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list:
    """``n`` distinct colours: matplotlib's default cycle repeats after 10, and a leaderboard with its
    comparison rows has more, so two rows would share a colour."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / (n - 1)) for i in range(n)]


def _wrap(text: str, fig, fontsize: float) -> str:
    """``text`` broken into lines that fit the figure's width (a title wider than its figure is cut
    off on both sides), at about 0.6 em per character."""
    return textwrap.fill(text, max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize))))


def _finish(fig, ax, title: str) -> None:
    """Title wrapped to the figure; legend under the axes, in as many columns as its longest label
    allows and in text as large as the tick labels, where it covers no bar or point; the figure
    grows by the legend's height, so the plot keeps its size however many rows the board has."""
    ax.set_title(_wrap(title, fig, 12), fontsize=12)
    ax.tick_params(labelsize=11)
    _, labels = ax.get_legend_handles_labels()
    if labels:
        longest = max(len(label) for label in labels) * 0.6 * 10 + 40  # points, at 10 pt
        ncol = max(1, min(4, len(labels), int(fig.get_figwidth() * 72 // longest)))
        fig.set_figheight(fig.get_figheight() + 0.25 * math.ceil(len(labels) / ncol) + 0.3)
        ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=ncol, frameon=False)
    fig.tight_layout()


def _label(method: str, preset: str, config: str) -> str:
    return f"{method} {preset}" + (f", {config}" if config else "")


def per_class_figures(finished: pd.DataFrame, board: pd.DataFrame) -> list[tuple[str, Any]]:
    """Per-class accuracy (mean over seeds) against training count, one figure per dataset version."""
    plt = _pyplot()
    labels = {tuple(r[k] for k in KEY): r["config"] for _, r in board.iterrows()}
    versions = finished.groupby("dataset")["fingerprint"].nunique()
    out = []
    for (dataset, fingerprint), runs in finished.groupby(["dataset", "fingerprint"]):
        fig, ax = plt.subplots(figsize=(12, 4.6))
        counts = np.asarray(runs.iloc[0]["train_counts"], dtype=np.int64)  # one fingerprint: one set of counts
        rule = runs.iloc[0]["rule"]
        series = list(runs.groupby(KEY))
        for (key, group), color in zip(series, _colors(len(series))):
            acc = np.nanmean([per_class_accuracy(c, t) for c, t in zip(group["correct"], group["total"])], axis=0)
            name = _label(key[1], key[2], labels.get(key, key[3][:6]))
            ax.scatter(counts, 100 * acc, s=14, alpha=0.75, color=color, label=f"{name} (n={len(group)})")
        groups = [m for m in shot_groups(counts, rule).values() if m.any()]
        for upper, lower in zip(groups, groups[1:]):  # boundary between adjacent non-empty groups
            ax.axvline(math.sqrt(counts[upper].min() * counts[lower].max()), color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log scale)")
        ax.set_ylabel("test accuracy of the class (%)")
        _finish(fig, ax, f"{dataset}: per-class accuracy vs class frequency ({rule} groups dashed)")
        suffix = f"_{fingerprint[:8]}" if versions[dataset] > 1 else ""  # e.g. two imbalance factors
        out.append((f"per_class_{dataset}{suffix}", fig))
    return out


def _bounded_errors(means: list[float], stds: list[float]) -> np.ndarray:
    """(lower, upper) error-bar lengths: the std, cut at 0 % and 100 % (an accuracy has no other values)."""
    mean = np.nan_to_num(np.asarray(means, dtype=np.float64))
    std = np.nan_to_num(np.asarray(stds, dtype=np.float64))  # one seed: no bar
    return np.stack([np.minimum(std, mean), np.minimum(std, 100 - mean)])


def group_figures(board: pd.DataFrame) -> list[tuple[str, Any]]:
    """Grouped bars of many / medium / few (and overall) per row, error bars = sample std over seeds."""
    plt = _pyplot()
    out = []
    versions = board.groupby("dataset")["fingerprint"].nunique()
    for (dataset, fingerprint), rows in board.groupby(["dataset", "fingerprint"]):
        fig, ax = plt.subplots(figsize=(12, 4.6))
        metrics = ("overall", *GROUPS)
        width = 0.8 / len(rows)
        for k, ((_, r), color) in enumerate(zip(rows.iterrows(), _colors(len(rows)))):
            x = np.arange(len(metrics)) + (k - (len(rows) - 1) / 2) * width
            ax.bar(
                x,
                [r[m] for m in metrics],
                width,
                yerr=_bounded_errors([r[m] for m in metrics], [r[f"{m}_std"] for m in metrics]),
                capsize=2,
                color=color,
                label=f"{_label(r['method'], r['preset'], r['config'])} (n={r['n']})",
            )
        ax.set_xticks(np.arange(len(metrics)), metrics)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        title = f"{dataset}: accuracy by shot group ({rows.iloc[0]['rule']} rule), mean ± std over seeds"
        _finish(fig, ax, title)
        suffix = f"_{fingerprint[:8]}" if versions[dataset] > 1 else ""
        out.append((f"groups_{dataset}{suffix}", fig))
    return out


def expert_figures(finished: pd.DataFrame, board: pd.DataFrame) -> list[tuple[str, Any]]:
    """For rows whose runs store several ``expert*`` heads: each expert's (and the combined
    prediction's) accuracy by shot group, mean over seeds."""
    plt = _pyplot()
    out = []
    labels = {tuple(r[k] for k in KEY): r["config"] for _, r in board.iterrows()}
    versions = finished.groupby("dataset")["fingerprint"].nunique()
    for key, runs in finished.groupby(KEY):
        heads = sorted(h for h in runs.iloc[0]["heads"] if h.startswith("expert"))
        if len(heads) < 2:
            continue
        heads = [*heads, *(h for h in runs.iloc[0]["heads"] if not h.startswith("expert"))]
        metrics = ("overall", *GROUPS)
        counts, rule = runs.iloc[0]["train_counts"], runs.iloc[0]["rule"]
        fig, ax = plt.subplots(figsize=(9, 5))
        width = 0.8 / len(heads)
        for k, head in enumerate(heads):
            per_run = [summarize(*h[head], counts, rule) for h in runs["heads"] if head in h]
            values = [np.nanmean([s[m] for s in per_run]) for m in metrics]
            x = np.arange(len(metrics)) + (k - (len(heads) - 1) / 2) * width
            ax.bar(x, values, width, label="combined (main)" if head == "main" else head)
        ax.set_xticks(np.arange(len(metrics)), metrics)
        ax.set_ylabel("test accuracy (%)")
        name = _label(key[1], key[2], labels.get(key, key[3][:6]))
        _finish(fig, ax, f"{key[0]}: {name}, accuracy of each expert by shot group (n={len(runs)})")
        suffix = f"_{key[4][:8]}" if versions[key[0]] > 1 else ""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{key[1]}_{key[2]}_{key[3][:6]}")
        out.append((f"experts_{key[0]}{suffix}_{slug}", fig))
    return out


def reliability_figures(finished: pd.DataFrame, board: pd.DataFrame, split: str = "test") -> list[tuple[str, Any]]:
    """Reliability diagrams, one figure per dataset version, one panel per row whose records store
    calibration bins: accuracy per confidence bin (bars, pooled over seeds; dots at the bin's mean
    confidence) against the diagonal of perfect calibration, the row's ECE (mean over seeds) in the
    panel's title."""
    plt = _pyplot()
    finished = finished if "ece" in finished else add_calibration(finished, split)
    labels = {tuple(r[k] for k in KEY): r["config"] for _, r in board.iterrows()}
    versions = finished.groupby("dataset")["fingerprint"].nunique()
    out = []
    for (dataset, fingerprint), runs in finished.groupby(["dataset", "fingerprint"]):
        panels = []
        for key, group in runs.groupby(KEY):
            stored = [stored_calibration(p, split)[0] for p in group["path"]]
            stored = [np.array([c["count"], c["confidence"], c["correct"]], dtype=np.float64) for c in stored if c]
            if stored and all(s.shape == stored[0].shape for s in stored):
                name = _label(key[1], key[2], labels.get(key, key[3][:6]))
                panels.append((name, np.sum(stored, axis=0), np.nanmean(group["ece"]), len(stored)))
        if not panels:
            continue
        cols = min(4, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(max(3.6 * cols, 6), 3.6 * rows + 0.8), squeeze=False)
        for ax, (name, (count, conf, correct), ece, n) in zip(axes.flat, panels):
            bins = len(count)
            edges = np.linspace(0, 1, bins + 1)
            seen = count > 0
            ax.bar(
                edges[:-1][seen],
                correct[seen] / count[seen],
                1 / bins,
                align="edge",
                color="tab:blue",
                edgecolor="white",
                label="accuracy",
            )
            ax.plot(conf[seen] / count[seen], correct[seen] / count[seen], "o", ms=3, color="tab:red")
            ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)  # perfect calibration
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
            ax.set_title(f"{name}\nECE {ece:.1f} % (n={n})", fontsize=9)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        title = f"{dataset}: reliability ({split} split, {len(count)} bins, pooled over seeds)"
        fig.suptitle(_wrap(title, fig, 12), fontsize=12)
        fig.tight_layout()
        suffix = f"_{fingerprint[:8]}" if versions[dataset] > 1 else ""
        out.append((f"reliability_{dataset}{suffix}", fig))
    return out


def figures(finished: pd.DataFrame, board: pd.DataFrame, split: str = "test") -> list[tuple[str, Any]]:
    """Every figure of the report, as (file stem, matplotlib figure)."""
    if finished.empty:
        return []
    return (
        per_class_figures(finished, board)
        + group_figures(board)
        + expert_figures(finished, board)
        + reliability_figures(finished, board, split)
    )


def save_figures(
    figs: list[tuple[str, Any]], out_dir: str | Path, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write each figure as PNG and PDF under ``out_dir`` and close it."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, fig in figs:
        for ext in formats:
            path = out_dir / f"{stem}.{ext}"
            fig.savefig(path, dpi=120, metadata={"CreationDate": None} if ext == "pdf" else None)
            written.append(path)
        plt.close(fig)
    return written


def png_bytes(figs: list[tuple[str, Any]]) -> list[tuple[str, bytes]]:
    """Each figure as PNG bytes (for the HTML page), closing it."""
    plt = _pyplot()
    out = []
    for stem, fig in figs:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out.append((stem, buf.getvalue()))
    return out
