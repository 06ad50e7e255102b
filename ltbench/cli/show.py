"""``ltbench show RUN_DIR_OR_ID``: one run at a glance: what it is, how its config differs from
the method's defaults (and which layer set each value), its state, stage timings, val/test
summary, the data it was trained on and where its files (loss curves, log, TensorBoard) are."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import LTBenchError
from ..records import RunDir, readable_root, results_root
from .common import command, print_summary


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR_OR_ID", help="a run directory, or a run id (or its first characters)")
    p.add_argument("--root", help="results directory to search for a run id (default: $LTBENCH_RESULTS or ./results)")
    p.add_argument("--shot-rule", default=None, help="shot rule of the summary (default: the run's eval.shot_rule)")


def find_run(what: str, root: str | None = None) -> RunDir:
    """The run directory ``what`` names: a path, else a (prefix of a) run id under the results root."""
    path = Path(what)
    if (path / "config.json").is_file():
        return RunDir(path)
    runs = (readable_root(root) if root else results_root(root)) / "runs"
    matches = sorted(p for p in runs.glob(f"*/*/{what}*") if (p / "config.json").is_file()) if runs.is_dir() else []
    if not matches:
        raise LTBenchError(f"no run directory {what} and no run id starting with {what!r} under {runs}")
    if len(matches) > 1:
        raise LTBenchError(
            f"{what!r} matches {len(matches)} runs: {', '.join(p.name for p in matches[:10])}; give more"
        )
    return RunDir(matches[0])


def config_changes(config: dict) -> list[tuple[str, object, str]]:
    """``(key, value, layer)`` for every value of a recorded config that differs from the method's
    defaults: the preset layers as resolution names them, anything else as set by ``--set``."""
    from ..config import config_from_dict, flatten, resolve_config

    cfg = config_from_dict(config)
    preset = cfg.preset if cfg.preset != "default" else None
    changes: list = []
    try:
        resolved = resolve_config(cfg.method_name, cfg.dataset_name, preset, provenance=changes)
    except LTBenchError:  # the preset changed since: compare with the method's defaults alone
        resolved = resolve_config(cfg.method_name, cfg.dataset_name, provenance=changes)
    by_layer = {key: source for key, _, source in changes}
    recorded, base = flatten(cfg), flatten(resolved)
    defaults = flatten(resolve_config(cfg.method_name, cfg.dataset_name))
    out = []
    for key, value in recorded.items():
        if key in ("method_name", "dataset_name"):
            continue
        if value != base.get(key):
            out.append((key, value, "--set (recorded)"))
        elif value != defaults.get(key) and key in by_layer:
            out.append((key, value, by_layer[key]))
    return out


def _data_line(fingerprint: str, root: str | None) -> str:
    return f"\ndata: fingerprint {fingerprint}" + (f", root {root}" if root else "")


def _seconds(value: float) -> str:
    minutes, secs = divmod(int(round(value)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{secs:02d}s" if minutes >= 60 else f"{minutes}m{secs:02d}s"


@command("show", "one run: config vs. defaults, state, timings, val/test summary, data and files", _configure)
def cmd_show(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    run = find_run(args.run, args.root)
    config = json.loads(run.config.read_text())
    state = run.state()
    print(
        f"run {run.path.name}: {config['method_name']} on {config['dataset_name']}, preset "
        f"{config.get('preset', 'default')}, seed {config['train']['seed']}\n"
        f"directory: {run.path}\nstate: {state}"
    )
    if state == "failed":
        print(f"error: {run.last_error()}\nlog: {run.log}")
    elif state in ("damaged record", "other schema"):
        print(f"problem: {run.record_error()}")
    rows = [[key, json.dumps(value), source] for key, value, source in config_changes(config)]
    print("\nconfig (what differs from the method's defaults):")
    print(tabulate(rows, headers=["key", "value", "set by"], tablefmt="github") if rows else "  (all defaults)")
    data = run.read_data()
    if run.is_done():
        record = run.read_record()
        details = record.get("dataset_details") or {}
        print(
            f"\ndata: fingerprint {record['dataset_fingerprint']}"
            + (f", root {details['root']}" if details.get("root") else "")
        )
        wall = record.get("wall_time", {})
        print("stage timings: " + ", ".join(f"{stage} {_seconds(s)}" for stage, s in wall.items()))
        selection = record["selection"]
        print(f"selected: {selection['policy']} (stage {selection['stage']}, epoch {selection['epoch']})")
        print_summary(record, args.shot_rule or config.get("eval", {}).get("shot_rule", "strict"))
        print(f"finished {record.get('finished_at', '?')} on {record.get('device', '?')}, git {record.get('git_sha')}")
    elif data is not None:
        print(f"\ndata: fingerprint {data['fingerprint']}" + (f", root {data['root']}" if data.get("root") else ""))
    print("\nfiles:")
    files = [
        (run.steps, "loss curves: loss, lr and loss terms per logged step"),
        (run.metrics, "evaluations, one line each (per-class counts)"),
        (run.log, "log"),
        (run.path / "tb", f"TensorBoard: tensorboard --logdir {run.path / 'tb'}"),
        (run.superseded, "earlier runs set aside by --force"),
    ]
    for path, what in files:
        if path.exists():
            print(f"  {path}  ({what})")
    print("  per-class plots: ltbench report --plots DIR (one figure per dataset, every finished run)")
    return 0
