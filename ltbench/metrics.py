"""Accuracy metrics, all derived from per-class correct/total counts and training class counts.

Runs store raw counts, never group accuracies, so any shot rule can be applied afterwards. Rules
are named data:

- ``strict``: many n > 100, medium 20 <= n <= 100, few n < 20 (RIDE, MDCS, SADE, LiVT)
- ``oltr``: many n >= 100, medium 20 < n < 100, few n <= 20 (OLTR's ``shot_acc``)
- ``index:a,b``: classes sorted by descending training count (ties by class id); positions
  [0,a) many, [a,b) medium, [b,C) few (DeiT-LT's ``--categories`` on its count-sorted class ids)

An empty group is NaN (shown as "-"), never 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

GROUPS = ("many", "medium", "few")


class RuleDoesNotFitError(ConfigError):
    """A well-formed ``index:A,B`` rule whose cut B exceeds a dataset's number of classes."""


def shot_groups(train_counts: np.ndarray | list[int], rule: str = "strict") -> dict[str, np.ndarray]:
    """Boolean class masks for many / medium / few under the named rule."""
    n = np.asarray(train_counts, dtype=np.int64)  # signed: the index rule sorts by -n
    if rule == "strict":
        return {"many": n > 100, "medium": (n >= 20) & (n <= 100), "few": n < 20}
    if rule == "oltr":
        return {"many": n >= 100, "medium": (n > 20) & (n < 100), "few": n <= 20}
    if rule.startswith("index:"):
        try:
            a, b = (int(v) for v in rule[len("index:") :].split(","))
        except ValueError:
            raise ConfigError(f"shot rule {rule!r}: expected index:A,B with two integers") from None
        if not 0 <= a <= b <= len(n):
            if 0 <= a <= b:
                raise RuleDoesNotFitError(f"shot rule {rule!r}: B={b} is beyond the {len(n)} classes")
            raise ConfigError(f"shot rule {rule!r}: need 0 <= A <= B <= {len(n)} classes")
        position = np.empty(len(n), dtype=np.int64)
        # ties keep class-id order, so on data re-indexed by count (DeiT-LT) position == class id
        position[np.argsort(-n, kind="stable")] = np.arange(len(n))
        return {"many": position < a, "medium": (position >= a) & (position < b), "few": position >= b}
    raise ConfigError(f"unknown shot rule {rule!r}; valid rules: strict, oltr, index:A,B")


def group_sizes(train_counts, rule: str = "strict") -> dict[str, int]:
    return {g: int(m.sum()) for g, m in shot_groups(train_counts, rule).items()}


def per_class_accuracy(correct, total) -> np.ndarray:
    correct, total = np.asarray(correct, dtype=np.float64), np.asarray(total, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def summarize(correct, total, train_counts, rule: str = "strict") -> dict[str, float]:
    """Overall (micro top-1), balanced (macro) and many / medium / few accuracy, in percent."""
    correct, total = np.asarray(correct), np.asarray(total)
    acc = per_class_accuracy(correct, total)
    out = {
        "overall": 100.0 * correct.sum() / total.sum() if total.sum() else math.nan,
        "balanced": 100.0 * _nanmean(acc),
    }
    for name, mask in shot_groups(train_counts, rule).items():
        out[name] = 100.0 * _nanmean(acc[mask])
    return out


def summarize_many(correct: np.ndarray, total: np.ndarray, train_counts, rule: str = "strict") -> dict[str, np.ndarray]:
    """:func:`summarize` of many runs at once: ``correct`` and ``total`` are [runs, classes] arrays
    of runs that share ``train_counts``; returns one array of length ``runs`` per metric.

    Runs evaluated on one test set (equal ``total`` rows, the usual case) need no per-class
    division: every metric is then linear in the counts, one matrix product for all of them."""
    correct, total = np.asarray(correct), np.asarray(total)
    groups = shot_groups(train_counts, rule)
    if len(total) and (total == total[0]).all():
        t = total[0].astype(np.float64)
        seen = t > 0
        weights = [np.where(seen, 1.0, 0.0)] + [np.where(seen & m, 1.0, 0.0) for m in groups.values()]
        with np.errstate(invalid="ignore", divide="ignore"):  # an empty group: a NaN column
            w = np.stack([v / np.maximum(t, 1) / v.sum() for v in weights], axis=1)
            values = 100.0 * (correct.astype(np.float64) @ w)
            overall = 100.0 * correct.sum(1, dtype=np.float64) / t.sum()
        return {"overall": overall, "balanced": values[:, 0], **{g: values[:, i + 1] for i, g in enumerate(groups)}}
    correct, total = correct.astype(np.float64), total.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        seen = total > 0
        acc = np.where(seen, correct / np.maximum(total, 1), 0.0)

        def mean(mask: np.ndarray | slice) -> np.ndarray:
            return acc[:, mask].sum(1) / seen[:, mask].sum(1)  # NaN when no class is seen

        out = {"overall": 100.0 * correct.sum(1) / total.sum(1), "balanced": 100.0 * mean(slice(None))}
        for name, mask in groups.items():
            out[name] = 100.0 * mean(mask)
    return out


@dataclass
class CalibrationBins:
    """Per-bin sample count, summed confidence and summed correctness: enough to recompute ECE."""

    count: list[int]
    confidence: list[float]
    correct: list[int]

    def ece(self) -> float:
        """Expected calibration error in percent: sum_b |acc_b - conf_b| * n_b / n."""
        n = np.asarray(self.count, dtype=np.float64)
        if n.sum() == 0:
            return math.nan
        gap = np.abs(np.asarray(self.correct) - np.asarray(self.confidence))  # n_b * |acc_b - conf_b|
        return float(100.0 * gap.sum() / n.sum())


def class_calibration_errors(
    by_class: Mapping[str, Sequence], masks: Mapping[str, np.ndarray], bins: int = 15
) -> dict[str, float]:
    """ECE (%) over the test images of each mask's classes, from the sparse per-(class, bin) sums that
    evaluation stores (``calibration_by_class``): the bins of the selected classes are added up, then
    ECE = sum_b |correct_b - confidence_b| / n. NaN for a mask without test images."""
    cls = np.asarray(by_class["class"], dtype=np.int64)
    where = np.asarray(by_class["bin"], dtype=np.int64)
    out = {}
    for name, mask in masks.items():
        keep = np.asarray(mask, dtype=bool)[cls]
        sums = [
            np.bincount(where[keep], weights=np.asarray(by_class[k], dtype=np.float64)[keep], minlength=bins)
            for k in ("count", "confidence", "correct")
        ]
        out[name] = CalibrationBins(*(s.tolist() for s in sums)).ece()
    return out


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> CalibrationBins:
    """Assign each prediction to one of ``bins`` equal-width confidence bins (lower edge open)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    idx = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    return CalibrationBins(
        count=np.bincount(idx, minlength=bins).tolist(),
        confidence=np.bincount(idx, weights=confidence, minlength=bins).tolist(),
        correct=np.bincount(idx, weights=np.asarray(correct, dtype=np.float64), minlength=bins)
        .astype(np.int64)
        .tolist(),
    )


def format_pct(value: float, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
