"""Renderers, one function per format: markdown, LaTeX, CSV, JSON and a self-contained HTML page
(its figures embedded as PNG)."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..errors import ConfigError
from .records import METRICS
from .stats import PUBLISHED_METRICS, paper_gaps
from .tables import Table, compute_cells, extra_metrics, leaderboard_caption, long_table, wide_table

FORMATS = ("md", "latex", "csv", "json", "html")

# ----------------------------------------------------------------------------- formats


def _md(table: Table) -> str:
    headers = table.headers
    if table.groups:  # markdown has one header row: prefix the group to its first column
        headers, col = list(headers), 0
        for label, span in table.groups:
            if label:
                headers[col : col + span] = [f"{label} {h}" for h in headers[col : col + span]]
            col += span
    rows = [[f"**{c}**" if (i, j) in table.bold else c for j, c in enumerate(row)] for i, row in enumerate(table.rows)]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


_LATEX_AFTER = {"\x01": r"\textbf{", "\x02": "}", "Δ": r"$\Delta$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "−": "$-$"}


def _latex(table: Table) -> str:
    rows = [
        [f"\x01{c}\x02" if (i, j) in table.bold else c for j, c in enumerate(row)] for i, row in enumerate(table.rows)
    ]
    body = tabulate(rows, headers=table.headers, tablefmt="latex_booktabs", disable_numparse=True)
    if table.groups:  # a \multicolumn row over each dataset, with \cmidrule under it
        cells, rules, col = [], [], 1
        for label, span in table.groups:
            cells.append(
                rf"\multicolumn{{{span}}}{{c}}{{{_latex_escape(label)}}}" if label else " & ".join([""] * span)
            )
            if label:
                rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        body = body.replace("\\toprule\n", "\\toprule\n" + " & ".join(cells) + " \\\\\n" + " ".join(rules) + "\n", 1)
    for k, v in _LATEX_AFTER.items():
        body = body.replace(k, v)
    return body


def _latex_escape(text: str) -> str:
    return "".join({"_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#"}.get(c, c) for c in text)


_CELL = re.compile(r"(?P<value>.*?)(?: \(Δ (?P<delta>[^)]*)\))?(?P<n> \(n=[^)]*\))?")


def _html_cell(text: str, bold: bool) -> str:
    """A number on one unbroken line and its paired difference (Δ, p) on a second, smaller one, so a
    column is as wide as its numbers and a wide leaderboard fits the window; words may wrap."""
    parts = _CELL.fullmatch(text)
    value, delta, n = parts["value"], parts["delta"], parts["n"] or ""
    shown = f"<b>{html.escape(value)}</b>" if bold else html.escape(value)
    if not delta and not (value[:1].isdigit() and " " in value + n):  # words, or one number: as they are
        return shown + html.escape(n)
    out = f"<span class='v'>{shown}{html.escape(n)}</span>"
    return out + (f"<span class='d'>Δ {html.escape(delta)}</span>" if delta else "")


def _html_table(table: Table, caption: str) -> str:
    out = [f"<table class='sortable'><caption>{html.escape(caption)}</caption><thead>"]
    if table.groups:
        out.append("<tr>" + "".join(f"<th colspan='{s}'>{html.escape(g)}</th>" for g, s in table.groups) + "</tr>")
    out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.headers) + "</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        cells = (_html_cell(c, (i, j) in table.bold) for j, c in enumerate(row))
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_HTML_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0 2em; font-size: 13px; }}
caption {{ caption-side: bottom; text-align: left; color: #555; padding-top: .5em; max-width: 70em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: top; }}
td {{ max-width: 20em; }}
td .v, td .d {{ display: block; white-space: nowrap; }}
td .d {{ font-size: 11px; color: #666; }}
thead th {{ border-bottom: 2px solid #444; cursor: pointer; }}
img {{ max-width: 100%; height: auto; display: block; margin: 1em 0; }}
</style></head><body>
<h1>{title}</h1>
"""

# click a header to sort by that column (numbers by their leading value), click again to reverse
_HTML_SCRIPT = """<script>
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[table.tHead.rows.length - 1].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (r) { var t = r.cells[col].textContent, v = parseFloat(t.replace('\\u2212', '-'));
                               return isNaN(v) ? t : v; };
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }
        return x < y ? -dir : x > y ? dir : 0; });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
</script>
"""


def _html_page(sections: list[tuple[str, Table, str]], notes: list[str], images: list[tuple[str, bytes]]) -> str:
    parts = [_HTML_HEAD.format(title="ltbench leaderboard")]
    for title, table, caption in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>\n{_html_table(table, caption)}")
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for title, png in images:
        data = base64.b64encode(png).decode()
        parts.append(
            f"<h3>{html.escape(title)}</h3>\n<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
        )
    parts.append(_HTML_SCRIPT + "</body></html>\n")
    return "\n".join(parts)


def render(
    board: pd.DataFrame,
    unfinished: pd.DataFrame,
    published: pd.DataFrame,
    fmt: str = "md",
    split: str = "test",
    *,
    layout: str = "long",
    ci: bool = False,
    deltas: pd.DataFrame | None = None,
    baseline: str | None = None,
    compute: pd.DataFrame | None = None,
    images: list[tuple[str, bytes]] | None = None,
    notes: list[str] | None = None,
) -> str:
    """The leaderboard as markdown, LaTeX, CSV, JSON or a self-contained HTML page (its figures
    embedded from ``images``, ``notes`` under its tables); ``deltas`` from :func:`paired_deltas`, ``compute`` from
    :func:`compute_table`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
    if layout not in ("long", "wide"):
        raise ConfigError(f"unknown layout {layout!r}; use long or wide")
    pub = paper_gaps(board, published)
    if fmt == "csv":
        return _csv(board, pub, deltas, ci)
    if fmt == "json":
        return _json(board, pub, unfinished, deltas, compute, split)
    pending = None
    if len(unfinished):
        cols = ["dataset", "method", "preset", "seed", "run_id", "state"]
        pending = Table(cols, [[str(v) for v in row] for row in unfinished[cols].values.tolist()])
    if board.empty:  # what is there is still said: unfinished and failed runs
        text = "No finished runs."
        if fmt == "html":
            return f"<p>{text}</p>\n" + (
                _html_table(pending, "Unfinished runs (not averaged)") + "\n" if pending else ""
            )
        if fmt == "latex":
            return f"{text}\n\n" + (f"% Unfinished runs (not averaged)\n{_latex(pending)}\n" if pending else "")
        return f"{text}\n\n" + (f"Unfinished runs (not averaged):\n\n{_md(pending)}\n" if pending else "")
    caption = leaderboard_caption(board, pub, split, ci, baseline, deltas)
    table = (wide_table if layout == "wide" else long_table)(board, pub, deltas, ci)
    compute_rows = compute_cells(compute) if compute is not None else None
    if fmt == "latex":
        text = f"% {caption}\n{_latex(table)}\n"
        if compute_rows:
            text += f"% Compute per run (means over seeds)\n{_latex(Table(*compute_rows))}\n"
        return text
    if fmt == "html":
        sections = [("Leaderboard", table, caption)]
        if compute_rows:
            sections.append(("Compute per run (means over seeds)", Table(*compute_rows), ""))
        if pending:
            sections.append(("Unfinished runs (not averaged)", pending, ""))
        return _html_page(sections, notes or [], images or [])
    text = f"{_md(table)}\n\n{caption}\n"
    if compute_rows:
        text += "\nCompute per run (means over seeds):\n\n" + _md(Table(*compute_rows)) + "\n"
    if pending:
        text += "\nUnfinished runs (not averaged):\n\n" + _md(pending) + "\n"
    return text


def _csv(board: pd.DataFrame, pub: pd.DataFrame, deltas: pd.DataFrame | None, ci: bool) -> str:
    base = ["dataset", "method", "preset", "source", "variant", "fingerprint", "n", "seeds"]
    base += [f"{m}{s}" for m in [*METRICS, *extra_metrics(board)] for s in ("", "_std", "_ci95")]
    ours = board.assign(source="ltbench")
    extra = ["config", "n_expected", "revisions"]
    if ci:
        extra += [f"{m}_{b}" for m in METRICS for b in ("lo", "hi")]
    if deltas is not None:
        ours = pd.concat([ours, deltas.drop(columns=["is_baseline"])], axis=1)
        extra += list(deltas.columns.drop("is_baseline"))
    gaps = [f"gap_{m}" for m in PUBLISHED_METRICS]
    paper = pub.assign(preset=pub["variant"], source="paper (" + pub["source"] + ", " + pub["shot_rule"] + ")")
    paper = paper[["dataset", "method", "preset", "source", *PUBLISHED_METRICS, *gaps]]
    table = pd.concat([ours, paper], ignore_index=True).reindex(columns=[*base, *extra, *gaps])
    for col in ("n", "n_expected", "pairs"):
        if col in table:
            table[col] = table[col].astype("Int64")
    return table.to_csv(index=False, float_format="%.4f")


def _plain(value: Any) -> Any:
    """A JSON value: NaN -> null, numpy scalars -> Python, floats to 10 decimals (the last bits
    depend on the order of summation, which is not part of the result)."""
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 10)
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _json(board, pub, unfinished, deltas, compute, split) -> str:
    rows = board.drop(columns=[]) if deltas is None else pd.concat([board, deltas], axis=1)
    out = {
        "split": split,
        "shot_rules": dict(sorted(zip(board["dataset"], board["rule"]))),
        "rows": _records(rows),
        "published": _records(pub),
        "unfinished": _records(unfinished.drop(columns=["path"], errors="ignore")),
    }
    if compute is not None:
        out["compute"] = _records(compute)
    return json.dumps(out, indent=1, sort_keys=False) + "\n"
