"""`ltbench report --metrics ece`: expected calibration error (15 equal-width bins) overall and per
shot group, from the calibration bins each record stores, checked against a case computed by hand;
and the reliability diagram of `--plots`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ltbench.metrics import calibration_bins, class_calibration_errors, shot_groups

TRAIN_COUNTS = [200, 50, 10]  # strict rule: class 0 many, 1 medium, 2 few
# (true class, confidence of the top-1 prediction, top-1 correct) of every test image, per seed
IMAGES = {
    0: [(0, 0.95, 1), (0, 0.95, 0), (1, 0.7, 0), (2, 0.5, 1)],
    1: [(0, 0.95, 1), (0, 0.95, 1), (1, 0.7, 0), (2, 0.5, 1)],
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LTBENCH_CACHE", str(tmp_path / "cache"))


def by_class(images) -> dict:
    """The sparse per-(class, bin) sums evaluation stores, built here from the images one by one;
    bin b holds confidences in (b/15, (b+1)/15]."""
    cells: dict[tuple[int, int], list[float]] = {}
    for cls, conf, ok in images:
        cell = cells.setdefault((cls, math.ceil(conf * 15) - 1), [0, 0.0, 0])
        cell[0], cell[1], cell[2] = cell[0] + 1, cell[1] + conf, cell[2] + ok
    keys = sorted(cells)
    return {
        "class": [k[0] for k in keys],
        "bin": [k[1] for k in keys],
        "count": [cells[k][0] for k in keys],
        "confidence": [cells[k][1] for k in keys],
        "correct": [cells[k][2] for k in keys],
    }


def write_runs(root: Path) -> None:
    for seed, images in IMAGES.items():
        correct = [sum(ok for c, _, ok in images if c == k) for k in range(3)]
        total = [sum(1 for c, _, _ in images if c == k) for k in range(3)]
        cal = calibration_bins(np.array([c for _, c, _ in images]), np.array([ok for _, _, ok in images]))
        record = {
            "schema": 1,
            "run_id": f"cal{seed}",
            "variant": "v",
            "method": "ce",
            "dataset": "synthetic_lt",
            "preset": "cpu",
            "seed": seed,
            "dataset_fingerprint": "fp",
            "train_counts": TRAIN_COUNTS,
            "splits": {
                "test": {
                    "heads": {"main": {"correct": correct, "total": total}},
                    "calibration": cal.__dict__,
                    "calibration_by_class": by_class(images),
                }
            },
        }
        path = root / "runs" / "synthetic_lt" / "ce" / f"cal{seed}"
        path.mkdir(parents=True)
        (path / "run.json").write_text(json.dumps(record))


def test_group_ece_by_hand():
    masks = shot_groups(TRAIN_COUNTS, "strict")
    got = class_calibration_errors(by_class(IMAGES[0]), {"all": np.ones(3, bool), **masks})
    # many: bin 14 holds 2 images of confidence 0.95, 1 right: |1 - 1.9| / 2 = 45 %
    # medium: one image 0.7, wrong: 70 %; few: one image 0.5, right: 50 %
    # all: (0.9 + 0.7 + 0.5) / 4 images = 52.5 %
    assert got == pytest.approx({"all": 52.5, "many": 45.0, "medium": 70.0, "few": 50.0})


def test_report_ece_columns_by_hand(cli, tmp_path):
    root = tmp_path / "results"
    write_runs(root)
    code, out, err = cli("report", "--root", str(root), "--metrics", "ece", "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)["rows"]
    # seed 0: 52.5 % overall, 45 % many; seed 1: (0.1 + 0.7 + 0.5) / 4 = 32.5 % overall, |2 - 1.9| / 2 = 5 % many
    assert row["ece"] == pytest.approx(42.5) and row["ece_std"] == pytest.approx(math.sqrt(200))
    assert row["ece_many"] == pytest.approx(25.0) and row["ece_many_std"] == pytest.approx(math.sqrt(800))
    assert row["ece_medium"] == pytest.approx(70.0) and row["ece_few"] == pytest.approx(50.0)
    code, out, _ = cli("report", "--root", str(root), "--metrics", "ece")
    header = out.splitlines()[0]
    assert [h.strip() for h in header.split("|")[-5:-1]] == ["ECE", "ECE many", "ECE medium", "ECE few"]
    assert "| 42.50 ± 14.14 | 25.00 ± 28.28 | 70.00 ± 0.00 | 50.00 ± 0.00 |" in out
    assert "ECE: expected calibration error" in out
    code, out, _ = cli("report", "--root", str(root))
    assert "ECE" not in out  # optional: the default report is unchanged
    code, _, err = cli("report", "--root", str(root), "--metrics", "nll")
    assert code == 2 and "the optional columns are: ece" in err


def test_reliability_diagram(cli, tmp_path):
    root = tmp_path / "results"
    write_runs(root)
    code, out, err = cli("report", "--root", str(root), "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    assert (tmp_path / "plots" / "reliability_synthetic_lt.png").stat().st_size > 10_000
    from ltbench.report import collect, leaderboard
    from ltbench.report.figures import reliability_figures

    finished, _ = collect(root)
    ((stem, fig),) = reliability_figures(finished, leaderboard(finished))
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    # bins pooled over both seeds: bin 7 (0.5) 2/2 right, bin 10 (0.7) 0/2, bin 14 (0.95) 3/4
    assert sorted(round(h, 4) for h in heights if h > 0) == [0.75, 1.0]
    assert "ECE 42.5" in ax.get_title()  # the mean over seeds, as in the table
