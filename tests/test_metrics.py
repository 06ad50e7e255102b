"""Shot rules, accuracies from per-class counts, and ECE, against hand-derived values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ltbench.data import exponential_profile
from ltbench.errors import ConfigError
from ltbench.metrics import CalibrationBins, calibration_bins, format_pct, group_sizes, shot_groups, summarize


def masks(counts, rule):
    return {k: v.tolist() for k, v in shot_groups(counts, rule).items()}


def test_strict_boundaries():
    # > 100 many; 20..100 medium (both ends included); < 20 few
    assert masks([101, 100, 20, 19], "strict") == {
        "many": [True, False, False, False],
        "medium": [False, True, True, False],
        "few": [False, False, False, True],
    }


def test_oltr_boundaries():
    # >= 100 many; 21..99 medium; <= 20 few
    assert masks([100, 99, 21, 20], "oltr") == {
        "many": [True, False, False, False],
        "medium": [False, True, True, False],
        "few": [False, False, False, True],
    }


def test_index_rule_sorts_by_descending_count():
    # counts 5, 50, 10, 100 -> order by count: class 3 (100), 1 (50), 2 (10), 0 (5)
    assert masks([5, 50, 10, 100], "index:1,3") == {
        "many": [False, False, False, True],
        "medium": [False, True, True, False],
        "few": [True, False, False, False],
    }
    with pytest.raises(ConfigError):
        shot_groups([1, 2], "index:2,1")
    with pytest.raises(ConfigError):
        shot_groups([1, 2], "median")


def test_cifar_lt_profiles():
    c100 = exponential_profile(500, 100, 100)
    assert sum(c100) == 10847 and c100[0] == 500 and c100[-1] == 5
    assert group_sizes(c100, "strict") == {"many": 35, "medium": 35, "few": 30}
    assert group_sizes(c100, "oltr") == {"many": 35, "medium": 34, "few": 31}
    assert group_sizes(c100, "index:36,71") == {"many": 36, "medium": 35, "few": 29}
    assert c100.count(20) == 1  # the one boundary class at exactly 20
    assert group_sizes(exponential_profile(500, 50, 100), "strict") == {"many": 41, "medium": 41, "few": 18}
    c10 = exponential_profile(5000, 100, 10)
    assert sum(c10) == 12406
    assert group_sizes(c10, "strict") == {"many": 8, "medium": 2, "few": 0}
    assert sum(exponential_profile(5000, 10, 10)) == 20431
    fm = exponential_profile(1000, 100, 10)
    assert fm == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10] and sum(fm) == 2478
    assert group_sizes(fm, "strict") == {"many": 5, "medium": 3, "few": 2}


@pytest.mark.parametrize(
    "name, strict, oltr, index",
    [
        ("imagenet_lt", (385, 479, 136), (391, 463, 146), ("index:390,835", (390, 445, 165))),
        ("inat2018", (842, 4076, 3224), (845, 3698, 3599), ("index:842,4543", (842, 3701, 3599))),
        ("places_lt", (131, 163, 71), (132, 156, 77), None),
    ],
)
def test_group_sizes_on_real_class_counts(shared, name, strict, oltr, index):
    counts = json.loads((shared / "data" / "class_counts" / f"{name}.json").read_text())["train_counts"]
    assert tuple(group_sizes(counts, "strict").values()) == strict
    assert tuple(group_sizes(counts, "oltr").values()) == oltr
    if index:
        assert tuple(group_sizes(counts, index[0]).values()) == index[1]


def test_summary_from_counts_by_hand():
    out = summarize(correct=[9, 5, 1], total=[10, 10, 10], train_counts=[200, 50, 5])
    assert out == pytest.approx({"overall": 50.0, "balanced": 50.0, "many": 90.0, "medium": 50.0, "few": 10.0})
    # micro vs macro on unequal totals: 10/12 overall, (0.9 + 0.5)/2 balanced
    out = summarize(correct=[9, 1], total=[10, 2], train_counts=[500, 300])
    assert out["overall"] == pytest.approx(100 * 10 / 12)
    assert out["balanced"] == pytest.approx(70.0)
    assert math.isnan(out["medium"]) and math.isnan(out["few"])  # empty groups are NaN, not 0
    assert format_pct(out["few"]) == "–"


def test_ece_by_hand():
    # 15 bins: 0.95 -> bin 14, 0.55 -> bin 8.  bin 14: conf 1.9, 1 correct; bin 8: conf 1.1, 2 correct
    bins = calibration_bins(np.array([0.95, 0.95, 0.55, 0.55]), np.array([1, 0, 1, 1]), 15)
    assert bins.count[14] == 2 and bins.count[8] == 2 and sum(bins.count) == 4
    assert bins.ece() == pytest.approx(100 * (abs(1 - 1.9) + abs(2 - 1.1)) / 4)  # 45%
    assert math.isnan(CalibrationBins([0] * 15, [0.0] * 15, [0] * 15).ece())
    # bin edges: (b/15, (b+1)/15]; exactly 1/15 is in bin 0, just above it in bin 1
    edge = calibration_bins(np.array([1 / 15, 1 / 15 + 1e-9, 1.0]), np.array([1, 1, 1]), 15)
    assert edge.count[0] == 1 and edge.count[1] == 1 and edge.count[14] == 1


def test_summarize_many_is_summarize_row_by_row():
    rng = np.random.default_rng(0)
    counts = np.array([300, 120, 80, 40, 19, 5])
    total = rng.integers(0, 6, size=(4, 6))
    total[1, 4:] = 0  # run 1 saw no few-shot test image: its few accuracy is NaN
    correct = rng.integers(0, 6, size=(4, 6)) % (total + 1)
    from ltbench.metrics import summarize_many

    for rule in ("strict", "oltr", "index:2,4"):
        many = summarize_many(correct, total, counts, rule)
        for i in range(4):
            one = summarize(correct[i], total[i], counts, rule)
            for k, v in one.items():
                assert (math.isnan(v) and math.isnan(many[k][i])) or many[k][i] == pytest.approx(v, rel=1e-12)
    assert math.isnan(summarize_many(correct, total, counts)["few"][1])
    # one test set for every run (the fast path): the same numbers as run by run
    shared = np.tile(total[0], (4, 1))
    correct = correct % (shared + 1)
    for rule in ("strict", "index:2,4", "index:0,0"):  # index:0,0: many and medium are empty (NaN)
        many = summarize_many(correct, shared, counts, rule)
        for i in range(4):
            for k, v in summarize(correct[i], shared[i], counts, rule).items():
                assert (math.isnan(v) and math.isnan(many[k][i])) or many[k][i] == pytest.approx(v, rel=1e-12)
