"""The report's figures are readable: titles inside the figure, error bars inside 0-100 %, legends
beside no bar (issue 26 item 12, issue 29)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ltbench.report import collect, leaderboard
from ltbench.report.figures import expert_figures, group_figures, per_class_figures

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LTBENCH_CACHE", str(tmp_path / "cache"))


def inside(fig, artist) -> bool:
    fig.canvas.draw()
    box, page = artist.get_window_extent(), fig.bbox
    return box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1 and box.y1 <= page.y1 + 1


def test_group_figure_title_fits_and_error_bars_stay_above_zero(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    # a long dataset name, and ce's few-shot accuracy 0, 0 and 30 % over its 3 seeds: std 17.3 > mean 10
    few = {"ce0000000000": 0, "ce0000000001": 0, "ce0000000002": 3}
    for path in root.glob("runs/synthetic_lt/*/*/run.json"):
        record = json.loads(path.read_text())
        record["dataset"] = "a_rather_long_synthetic_dataset_name_lt"
        if record["run_id"] in few:
            record["splits"]["test"]["heads"]["main"]["correct"][2] = few[record["run_id"]]
        path.write_text(json.dumps(record))
    finished, _ = collect(root)
    board = leaderboard(finished)
    figs = dict(group_figures(board))
    fig = figs["groups_a_rather_long_synthetic_dataset_name_lt_fp-a"]
    ax = fig.axes[0]
    assert inside(fig, ax.title) and inside(fig, ax.get_legend())
    lows = [
        seg[:, 1].min() for c in ax.containers if hasattr(c, "lines") for lc in c.lines[2] for seg in lc.get_segments()
    ]
    highs = [
        seg[:, 1].max() for c in ax.containers if hasattr(c, "lines") for lc in c.lines[2] for seg in lc.get_segments()
    ]
    assert lows and min(lows) >= 0 and max(highs) <= 100
    rows = board[board["dataset"] == "a_rather_long_synthetic_dataset_name_lt"]
    assert ((rows["few"] - rows["few_std"]) < 0).any()  # the case: a symmetric bar would go below 0 %


def test_legends_cover_no_bar_or_point():
    finished, _ = collect(FIXTURE)
    board = leaderboard(finished)
    for _, fig in [*expert_figures(finished, board), *per_class_figures(finished, board), *group_figures(board)]:
        ax = fig.axes[0]
        fig.canvas.draw()
        legend, plot = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.y1 <= plot.y0 and inside(fig, ax.get_legend()) and inside(fig, ax.title)
        assert all(t.get_fontsize() >= 10 for t in ax.get_legend().get_texts())
        assert np.isfinite(legend.width) and legend.width > 0
