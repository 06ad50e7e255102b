"""`ltbench report` on a committed frozen run tree: exact output in every format, and the numbers
checked by hand (see tests/fixtures/make_report_fixture.py)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ltbench.report import collect, comparable_published, leaderboard

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report"


@pytest.mark.parametrize("fmt", ["md", "latex", "csv"])
def test_exact_output(cli, fmt):
    code, out, _ = cli("report", "--root", str(FIXTURE), "--format", fmt)
    assert code == 0
    assert out == (FIXTURE / f"expected.{fmt}").read_text()


def test_numbers_by_hand():
    finished, unfinished = collect(FIXTURE)
    board = leaderboard(finished).set_index(["method", "preset"])
    ce = board.loc[("ce", "cpu")]
    assert ce["n"] == 3 and ce["seeds"] == "0,1,2"
    assert ce["overall"] == pytest.approx((170 / 3 + 160 / 3 + 50) / 3)  # 53.33
    assert ce["overall_std"] == pytest.approx(10 / 3)  # sample std of 56.67, 53.33, 50.00
    assert ce["many"] == pytest.approx(90) and ce["many_std"] == pytest.approx(10)
    assert ce["few"] == pytest.approx(20) and ce["few_std"] == pytest.approx(10)
    assert ce["overall_ci95"] == pytest.approx(4.303 * (10 / 3) / math.sqrt(3), rel=1e-3)  # t(0.975, 2)
    # a run of another preset and dataset fingerprint is never averaged in
    assert board.loc[("ce", "smoke")]["n"] == 1
    assert math.isnan(board.loc[("ride", "cpu")]["overall_std"])  # one seed: no spread
    assert unfinished[["method", "seed", "state"]].values.tolist() == [["ride", 1, "not started"]]


def test_other_shot_rule_and_plots(cli, tmp_path):
    # 200 / 50 / 10 images fall in the same groups under the oltr rule
    finished, _ = collect(FIXTURE, rule="oltr")
    assert finished.set_index("run_id").loc["ce0000000000", "many"] == pytest.approx(90.0)
    code, out, _ = cli("report", "--root", str(FIXTURE), "--plots", str(tmp_path))
    # two dataset versions (fingerprints) of synthetic_lt in the fixture: one figure each
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == [
        "per_class_synthetic_lt_fp-a.png",
        "per_class_synthetic_lt_fp-b.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in tmp_path.iterdir())


def test_report_writes_a_file_atomically(cli, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    code, out, _ = cli("report", "--root", str(root), "--out", str(tmp_path / "board.md"))
    assert code == 0 and (tmp_path / "board.md").read_text() == (FIXTURE / "expected.md").read_text()


def test_empty_results(cli, tmp_path):
    code, out, _ = cli("report", "--root", str(tmp_path))
    assert code == 0 and out.startswith("No finished runs.")


def test_published_rows_with_a_resolution_sit_only_beside_runs_at_that_resolution():
    board = pd.DataFrame({"dataset": ["cifar10_lt", "cifar10_lt"], "method": ["livt", "ride"], "image_size": [0, 0]})
    published = pd.DataFrame(
        {
            "dataset": ["cifar10_lt", "cifar10_lt", "cifar10_lt"],
            "method": ["livt", "livt", "ride"],
            "variant": ["ViT-B at 224 px", "no resolution given", "ResNet-32"],
            "image_size": [224, None, None],
        }
    )
    assert comparable_published(board, published)["variant"].tolist() == ["no resolution given", "ResNet-32"]
    at_224 = board.assign(image_size=[224, 0])
    assert comparable_published(at_224, published)["variant"].tolist() == [
        "ViT-B at 224 px",
        "no resolution given",
        "ResNet-32",
    ]
