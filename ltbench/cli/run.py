"""``ltbench run``, ``ltbench report`` and ``ltbench list``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import ConfigError, LTBenchError
from ..registry import DATASETS, METHODS, load_plugins
from .common import add_config_args, command, config_sets, print_summary

log = logging.getLogger("ltbench")


# ----------------------------------------------------------------------------- run


def _configure_run(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--method", help="a registered method (see `ltbench list`)")
    p.add_argument("--dataset", help="a registered dataset (default: fmnist_lt)")
    which.add_argument(
        "--config",
        metavar="FILE",
        help="rerun a recorded configuration (a run's config.json or run.json); --set and --seed still apply",
    )
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what differs from the method's defaults (and which layer set it) and the run directory",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="train again from the start even if the run is finished (or was trained on other data); "
        "the old files are moved to superseded/ in the run directory, never deleted",
    )
    from .sweep import add_launcher_args

    add_launcher_args(p, launchers=("local", "slurm"))


def run_config(args: argparse.Namespace):
    """The run's Config: ``--config FILE`` (a recorded run) or ``--method``/``--dataset``/``--preset``,
    then ``--set``/``--seed``; with the layer that set each value that differs from the defaults."""
    from ..config import Provenance, apply_sets, flatten, load_config_file, resolve_config

    if args.config:
        if args.dataset or args.preset:
            raise ConfigError("--config FILE holds the method, dataset and preset: give --set/--seed only with it")
        cfg = load_config_file(args.config)
        trace = Provenance(cfg)
        trace.baseline = flatten(resolve_config(cfg.method_name, cfg.dataset_name))
        trace.source = dict.fromkeys(trace.before, "--config")
        apply_sets(cfg, config_sets(args), args.seed, trace)
        return cfg, trace.changes(cfg)
    changes: list = []
    cfg = resolve_config(args.method, args.dataset or "fmnist_lt", args.preset, config_sets(args), args.seed, changes)
    return cfg, changes


def print_dry_run(cfg, changes: list, run_dir: Path) -> None:
    """The values that differ from the method's defaults, each with the layer that set it."""
    from tabulate import tabulate

    print(f"{cfg.method_name} on {cfg.dataset_name}, preset {cfg.preset}, seed {cfg.train.seed}, run id {cfg.run_id()}")
    rows = [[key, json.dumps(value), source] for key, value, source in changes]
    if rows:
        print(tabulate(rows, headers=["key", "value", "set by"], tablefmt="github", disable_numparse=True))
    else:
        print("(every value is the method's default)")
    print(f"run directory: {run_dir}")


def dry_run_checks(cfg) -> None:
    """What a run would refuse (best-val without a val split) or warn about (a schedule cut short,
    classes without test images), from the split labels alone where the dataset has split files."""
    from ..config import schedule_warnings
    from ..errors import DataError
    from ..preflight import check_selection, empty_test_classes

    for warning in schedule_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        labels = DATASETS.get(cfg.dataset_name)().split_labels(cfg.data)
    except DataError as err:
        print(f"note: the data was not checked ({err})", file=sys.stderr)
        return
    check_selection(cfg, labels.val is not None)
    warning = empty_test_classes(labels.num_classes, labels.test)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


@command("run", "train one method on one dataset (resumes if interrupted)", _configure_run)
def cmd_run(args: argparse.Namespace) -> int:
    from ..records import writable_dir
    from ..runner import run_dir_for, train

    cfg, changes = run_config(args)
    if args.dry_run:
        dry_run_checks(cfg)
        print_dry_run(cfg, changes, run_dir_for(cfg, args.out).path)
        from ..cluster.sweep import required_runs

        for name, tcfg in required_runs(cfg).items():
            trun = run_dir_for(tcfg, args.out)
            print(f"needs its {name} run ({'finished' if trun.is_done() else 'trained first'}): {trun.path}")
        return 0
    writable_dir(args.out, "--out")
    if args.launcher == "slurm" or max(args.gpus_per_node or 0, args.tasks_per_node or 0) > 1:
        from .sweep import submit_run

        if args.force:
            raise ConfigError(
                "--force trains here only (--launcher local, one process); for a cluster job, move the run "
                "directory aside by hand or give another --out"
            )

        return submit_run(cfg, args)  # a Slurm job, or DDP processes on this machine
    from ..distributed import init_from_env, shutdown
    from ..trainer import TrainingInterrupted, stop_on_interrupt

    # started by torchrun (RANK, WORLD_SIZE, ... set): this process joins torchrun's process group
    dist = init_from_env("gloo" if cfg.train.device == "cpu" else None, cfg.train.dist_timeout_minutes)
    try:
        with stop_on_interrupt() as on_trainer:
            result = train(cfg, args.out, progress=not args.quiet, dist=dist, on_trainer=on_trainer, force=args.force)
    except TrainingInterrupted:
        print(
            f"interrupted: a checkpoint was written in {run_dir_for(cfg, args.out).path}; run the same command "
            "again to resume from it",
            file=sys.stderr,
        )
        return 130
    finally:
        shutdown(dist)
    if result.already_done:
        print(f"already finished: {result.run.record} (--force trains it again, keeping this record aside)")
    else:
        print(f"finished: {result.run.record}")
    print_summary(result.record, cfg.eval.shot_rule)
    return 0


# ----------------------------------------------------------------------------- report


def _configure_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", help="results directory to read (default: $LTBENCH_RESULTS or ./results)")
    p.add_argument(
        "--shot-rule",
        action="append",
        default=[],
        metavar="[DATASET=]RULE",
        help="strict, oltr or index:A,B, for every dataset or for one (cifar100_lt=index:36,71); repeatable or "
        "comma-separated; a dataset without one uses its own default (strict unless it says otherwise)",
    )
    p.add_argument("--format", default="md", choices=("md", "latex", "csv", "json", "html"))
    p.add_argument(
        "--layout", default="long", choices=("long", "wide"), help="wide: rows are methods, columns datasets"
    )
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--ci", action="store_true", help="show 95%% t-intervals over seeds instead of the std")
    p.add_argument("--baseline", metavar="METHOD[:PRESET]", help="add paired-by-seed deltas and t-test p-values")
    p.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="NAME",
        help="optional columns: ece (expected calibration error, 15 bins, overall and many/medium/few)",
    )
    p.add_argument("--compute", action="store_true", help="add the compute table (epochs, time, params, MACs, memory)")
    p.add_argument("--git", metavar="SHA", help="only runs made by this git revision (a prefix)")
    p.add_argument("--since", metavar="REV", help="only runs made by REV or a later revision")
    p.add_argument("--published", help="CSV of published numbers (default: <root>/published.csv)")
    p.add_argument("--plots", metavar="DIR", help="also write the figures to DIR (PNG and PDF)")
    p.add_argument("--out", help="write the table to FILE instead of printing it (an existing FILE needs --force)")
    p.add_argument("--force", action="store_true", help="let --out replace an existing file")
    p.add_argument("--no-cache", action="store_true", help="parse every run.json again (no parsed-record cache)")


@command("report", "leaderboards of every finished run (mean ± std over seeds)", _configure_report)
def cmd_report(args: argparse.Namespace) -> int:
    from ..records import atomic_write_text, readable_root
    from ..report import build_report
    from ..report.figures import figures, save_figures

    root = readable_root(args.root)
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise LTBenchError(f"--out {out} is a directory; give the name of the file to write, e.g. {out / 'board.md'}")
    if out is not None and out.exists() and not args.force:
        raise LTBenchError(f"--out {out} already exists; pass --force to replace it, or choose another name")
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise LTBenchError(f"--plots {args.plots} is a file; give a directory for the figures")
    report = build_report(
        root,
        args.format,
        args.split,
        layout=args.layout,
        shot_rules=args.shot_rule,
        metrics=args.metrics,
        ci=args.ci,
        baseline=args.baseline,
        compute=args.compute,
        git=args.git,
        since=args.since,
        published=args.published,
        cache=not args.no_cache,
    )
    text, notes = report.text, report.notes
    if notes and (args.format in ("csv", "json") or out is not None):
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    if out is not None:
        try:
            atomic_write_text(out, text)
        except OSError as err:
            raise LTBenchError(f"--out {out}: cannot write there ({err.strerror or err})") from None
        print(f"wrote {out}")
    else:
        print(text, end="")
    if args.plots:
        for path in save_figures(figures(report.finished, report.board, args.split), args.plots):
            print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- list


@command("list", "registered methods and datasets", lambda p: None)
def cmd_list(args: argparse.Namespace) -> int:
    from importlib.metadata import entry_points

    from ..registry import builtin_index

    methods = datasets = None
    if "ltbench.methods" not in sys.modules and not entry_points(group="ltbench.plugins"):
        methods, datasets = builtin_index("method"), builtin_index("dataset")  # read, not imported: no torch
    if methods is None or datasets is None:
        load_plugins()
        methods = [(n, METHODS.describe(n), sorted(METHODS.get(n).presets)) for n in METHODS.names()]
        datasets = [(n, DATASETS.describe(n), []) for n in DATASETS.names()]
    print("methods:")
    for name, description, presets in methods:
        print(f"  {name:<14} {description}  [presets: {', '.join(presets) or '-'}]")
    print("datasets:")
    for name, description, _ in datasets:
        print(f"  {name:<14} {description}")
    return 0
