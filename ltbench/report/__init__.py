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
