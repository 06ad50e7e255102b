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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..metrics import GROUPS, per_class_accuracy, shot_groups, summarize
from .records import KEY


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


def _legend_outside(ax) -> None:
    """Legend to the right of the axes, where it cannot cover bars or points."""
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def _label(method: str, preset: str, config: str) -> str:
    return f"{method} {preset}" + (f", {config}" if config else "")


def per_class_figures(finished: pd.DataFrame, board: pd.DataFrame) -> list[tuple[str, Any]]:
    """Per-class accuracy (mean over seeds) against training count, one figure per dataset version."""
    plt = _pyplot()
    labels = {tuple(r[k] for k in KEY): r["config"] for _, r in board.iterrows()}
    versions = finished.groupby("dataset")["fingerprint"].nunique()
    out = []
    for (dataset, fingerprint), runs in finished.groupby(["dataset", "fingerprint"]):
        fig, ax = plt.subplots(figsize=(10, 4.2))
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
        ax.set_title(f"{dataset}: per-class accuracy vs class frequency ({rule} groups dashed)")
        _legend_outside(ax)
        fig.tight_layout()
        suffix = f"_{fingerprint[:8]}" if versions[dataset] > 1 else ""  # e.g. two imbalance factors
        out.append((f"per_class_{dataset}{suffix}", fig))
    return out


def group_figures(board: pd.DataFrame) -> list[tuple[str, Any]]:
    """Grouped bars of many / medium / few (and overall) per row, error bars = sample std over seeds."""
    plt = _pyplot()
    out = []
    versions = board.groupby("dataset")["fingerprint"].nunique()
    for (dataset, fingerprint), rows in board.groupby(["dataset", "fingerprint"]):
        fig, ax = plt.subplots(figsize=(min(16, 6 + 0.45 * len(rows)), 4.2))
        metrics = ("overall", *GROUPS)
        width = 0.8 / len(rows)
        for k, ((_, r), color) in enumerate(zip(rows.iterrows(), _colors(len(rows)))):
            x = np.arange(len(metrics)) + (k - (len(rows) - 1) / 2) * width
            ax.bar(
                x,
                [r[m] for m in metrics],
                width,
                yerr=[0 if math.isnan(r[f"{m}_std"]) else r[f"{m}_std"] for m in metrics],
                capsize=2,
                color=color,
                label=f"{_label(r['method'], r['preset'], r['config'])} (n={r['n']})",
            )
        ax.set_xticks(np.arange(len(metrics)), metrics)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset}: accuracy by shot group ({rows.iloc[0]['rule']} rule), mean ± std over seeds")
        _legend_outside(ax)
        fig.tight_layout()
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
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(heads)
        for k, head in enumerate(heads):
            per_run = [summarize(*h[head], counts, rule) for h in runs["heads"] if head in h]
            values = [np.nanmean([s[m] for s in per_run]) for m in metrics]
            x = np.arange(len(metrics)) + (k - (len(heads) - 1) / 2) * width
            ax.bar(x, values, width, label="combined (main)" if head == "main" else head)
        ax.set_xticks(np.arange(len(metrics)), metrics)
        ax.set_ylabel("test accuracy (%)")
        name = _label(key[1], key[2], labels.get(key, key[3][:6]))
        ax.set_title(f"{key[0]}: {name}, accuracy of each expert by shot group (n={len(runs)})", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        suffix = f"_{key[4][:8]}" if versions[key[0]] > 1 else ""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{key[1]}_{key[2]}_{key[3][:6]}")
        out.append((f"experts_{key[0]}{suffix}_{slug}", fig))
    return out


def figures(finished: pd.DataFrame, board: pd.DataFrame) -> list[tuple[str, Any]]:
    """Every figure of the report, as (file stem, matplotlib figure)."""
    if finished.empty:
        return []
    return per_class_figures(finished, board) + group_figures(board) + expert_figures(finished, board)


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
