"""Leaderboards from finished runs: mean ± sample std over seeds, beside published numbers.

Everything is recomputed from the per-class correct/total counts and training class counts saved
in each ``run.json``, so any shot rule can be applied after the fact; what a run cost (parameters,
MACs, peak memory, epochs and wall time per stage) is read from its record, never recomputed. Runs
are averaged together only when dataset, method, preset, configuration variant (the semantic config
without the seed) and dataset fingerprint all agree. Unfinished runs are listed apart.

The modules, each importing only the ones before it: :mod:`.records` (reading + cache),
:mod:`.stats` (over seeds and pairs), :mod:`.tables` (layouts), :mod:`.render` (one function per
format); :mod:`.figures` draws the plots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import LTBenchError
from .records import KEY, METRICS, collect, dataset_rule, parse_shot_rules, read_records, select_revisions
from .render import FORMATS, render
from .stats import (
    ECE_METRICS,
    add_calibration,
    best_cells,
    comparable_published,
    compute_table,
    describe_variants,
    leaderboard,
    load_published,
    paired_deltas,
    paper_gaps,
    recipe_similarity,
)
from .tables import Table, long_table, wide_table

__all__ = [
    "Report",
    "build_report",
    "ECE_METRICS",
    "FORMATS",
    "KEY",
    "METRICS",
    "Table",
    "add_calibration",
    "best_cells",
    "collect",
    "comparable_published",
    "compute_table",
    "dataset_rule",
    "describe_variants",
    "leaderboard",
    "load_published",
    "long_table",
    "paired_deltas",
    "paper_gaps",
    "parse_shot_rules",
    "read_records",
    "recipe_similarity",
    "render",
    "select_revisions",
    "wide_table",
]


OPTIONAL_METRICS = ("ece",)


@dataclasses.dataclass
class Report:
    """What ``ltbench report`` prints (``text``, notes included where the format has room for them),
    the notes apart, and the frames the figures are drawn from."""

    text: str
    notes: list[str]
    finished: pd.DataFrame
    board: pd.DataFrame


def build_report(
    root: Path,
    fmt: str = "md",
    split: str = "test",
    *,
    layout: str = "long",
    shot_rules: Sequence[str] = (),
    metrics: Sequence[str] = (),
    ci: bool = False,
    baseline: str | None = None,
    compute: bool = False,
    git: str | None = None,
    since: str | None = None,
    published: str | None = None,
    cache: bool = True,
) -> Report:
    """The whole report, as the CLI's options describe it: read, select, aggregate, render."""
    from .figures import figures, png_bytes

    extra = {m.strip() for spec in metrics for m in spec.split(",") if m.strip()}
    if extra - set(OPTIONAL_METRICS):
        unknown = ", ".join(sorted(extra - set(OPTIONAL_METRICS)))
        raise LTBenchError(f"--metrics {unknown}: unknown; the optional columns are: {', '.join(OPTIONAL_METRICS)}")
    finished, unfinished = collect(root, split, parse_shot_rules(list(shot_rules)), cache=cache)
    if git or since:
        finished = select_revisions(finished, git, since)
    if "ece" in extra:
        finished = add_calibration(finished, split)
    board = leaderboard(finished)
    notes = finished.attrs.get("notes", [])
    text = render(
        board,
        unfinished,
        load_published(published, root),
        fmt,
        split,
        layout=layout,
        ci=ci,
        deltas=paired_deltas(finished, board, baseline) if baseline and len(board) else None,
        baseline=baseline,
        compute=compute_table(finished, board) if compute and len(board) else None,
        images=png_bytes(figures(finished, board, split)) if fmt == "html" else None,
        notes=notes,
    )
    if notes and fmt == "md":  # what was left out, and why, belongs in the report itself
        text += "\nNotes:\n\n" + "".join(f"- {note}\n" for note in notes)
    elif notes and fmt == "latex":
        text += "".join(f"% note: {note}\n" for note in notes)
    return Report(text, notes, finished, board)
