"""Table layouts, independent of the output format: the long layout (one row per ltbench group
and per published number) and the wide one (rows are methods, column groups datasets), the compute
table and the caption that says how to read them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import pandas as pd

from ..metrics import GROUPS
from .records import METRICS
from .stats import ECE_METRICS, best_cells, fmt_seconds, rows_by_index

WIDE_METRICS = ("overall", "many", "medium", "few")
ECE_HEADERS = {"ece": "ECE", "ece_many": "ECE many", "ece_medium": "ECE medium", "ece_few": "ECE few"}


def extra_metrics(board: pd.DataFrame) -> list[str]:
    """The optional columns the board carries (``--metrics ece``)."""
    return [m for m in ECE_METRICS if m in board]


def compute_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
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
            f"{fmt_seconds(r['wall_total_s'])} ({r['wall']})" if r["wall"] else fmt_seconds(r["wall_total_s"]),
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
    if m in r.get("untested", "").split(","):
        text += " ‡"
    if delta is not None and delta.get("pairs") and not delta.get("is_baseline") and f"p_{m}" in delta:
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


def long_table(board: pd.DataFrame, pub: pd.DataFrame, deltas: pd.DataFrame | None, ci: bool) -> Table:
    """One row per ltbench group and per published number, datasets one after the other."""
    rows, bold = [], set()
    best = best_cells(board)
    extra = extra_metrics(board)
    records, delta_of = rows_by_index(board), rows_by_index(deltas)
    for dataset in sorted(set(board["dataset"])):
        for i in board.index[board["dataset"] == dataset]:
            r, delta = records[i], delta_of.get(i)
            source = "ltbench (baseline)" if delta and delta["is_baseline"] else "ltbench"
            for j, m in enumerate(METRICS):
                if (i, m) in best:
                    bold.add((len(rows), 6 + j))
            rows.append(
                [r["dataset"], r["method"], r["preset"], r["config"], _n(r), source]
                + [_cell(r, m, ci, delta) for m in [*METRICS, *extra]]
            )
        for _, p in pub[pub["dataset"] == dataset].iterrows():
            rows.append(
                [p["dataset"], p["method"], str(p["variant"]), "", "–", f"paper ({p['source']}, {p['shot_rule']})"]
                + [_paper_cell(p, "overall"), "–", *[_paper_cell(p, m) for m in GROUPS]]
                + ["–" for _ in extra]
            )
    return Table([*HEADERS, *(ECE_HEADERS[m] for m in extra)], rows, bold)


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
    metrics = [*WIDE_METRICS, *extra_metrics(board)]
    width = len(metrics)
    headers = ["method", "preset", "config"] + [ECE_HEADERS.get(m, m) for _ in pairs for m in metrics]
    records, delta_of = rows_by_index(board), rows_by_index(deltas)
    by_key: dict[tuple, list] = {}
    for i, r in records.items():
        by_key.setdefault((r["method"], r["preset"], r["config"]), []).append(i)
    column = {p: 3 + width * k for k, p in enumerate(pairs)}
    rows, bold = [], set()
    for (method, preset, config), mine in sorted(by_key.items()):
        row = [method, preset, config] + ["" for _ in pairs for _ in metrics]
        for i in mine:
            r, delta = records[i], delta_of.get(i)
            col = column[r["dataset"], r["fingerprint"]]
            for j, m in enumerate(metrics):
                row[col + j] = _cell(r, m, ci, delta)
                if (i, m) in best:
                    bold.add((len(rows), col + j))
            if r["n"] < r["n_expected"] or "," in r["revisions"]:
                row[col] += f" (n={_n(r)})"
        rows.append(row)
    for (method, variant), ps in pub.groupby(["method", "variant"], sort=True):
        row = [method, "paper", str(variant)] + ["" for _ in pairs for _ in metrics]
        for _, p in ps.iterrows():  # under the dataset version of the row its gap refers to
            col = 3 + width * pairs.index((p["dataset"], p["vs_fingerprint"]))
            row[col : col + width] = [_paper_cell(p, m) for m in metrics]
        rows.append(row)
    groups = [("", 3)] + [(labels[p], width) for p in pairs]
    return Table(headers, rows, bold, groups)


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


def leaderboard_caption(
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
    if "untested" in board and (board["untested"] != "").any():
        extras.append(f"‡ the mean leaves out classes that have no {split} images (see the notes)")
    if extra_metrics(board):
        extras.append(
            "ECE: expected calibration error (%, lower is better) of the main head's top-1 confidence in 15 "
            f"equal-width bins over the {split} split; ECE many/medium/few: over the images of that group's classes"
        )
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
