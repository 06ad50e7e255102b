"""The ``ltbench`` command line.

Subcommands register themselves with :func:`command`; modules that add commands are listed in
``COMMAND_MODULES``. User errors (:class:`~ltbench.errors.LTBenchError`) print one message and exit
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import LTBenchError
from .registry import DATASETS, METHODS, load_plugins

log = logging.getLogger("ltbench")

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = []
COMMAND_MODULES: tuple[str, ...] = ("ltbench.datacmd", "ltbench.sweepcmd")


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register ``fn(args) -> exit status`` as the subcommand ``name``."""

    def decorator(fn: Handler) -> Handler:
        _COMMANDS.append((name, help, configure, fn))
        return fn

    return decorator


def add_config_args(p: argparse.ArgumentParser, method_required: bool = True) -> None:
    """The options that select and override a configuration (shared by run and sweep)."""
    p.add_argument("--preset", help="recipe: smoke, cpu, paper, ... (see `ltbench list`)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stages.train.epochs=10 (repeatable)",
    )
    p.add_argument("--root", help="dataset directory (same as --set data.root=DIR)")
    p.add_argument("--out", help="results directory (default: $LTBENCH_RESULTS or ./results)")


def config_sets(args: argparse.Namespace) -> list[str]:
    return list(args.sets) + ([f"data.root={args.root}"] if getattr(args, "root", None) else [])


# ----------------------------------------------------------------------------- run


def _configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="a registered method (see `ltbench list`)")
    p.add_argument("--dataset", default="fmnist_lt", help="a registered dataset (default: fmnist_lt)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    add_config_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and run directory only")
    from .sweepcmd import add_launch_args

    add_launch_args(p, launchers=("local", "slurm"))


def print_summary(record: dict, rule: str = "strict") -> None:
    from .metrics import format_pct, summarize

    for split in ("val", "test"):
        if split not in record["splits"]:
            continue
        head = record["splits"][split]["heads"]["main"]
        acc = summarize(head["correct"], head["total"], record["train_counts"], rule)
        print(
            f"{split:>4}: overall {format_pct(acc['overall'], 2)}  balanced {format_pct(acc['balanced'], 2)}  "
            f"many {format_pct(acc['many'], 2)}  medium {format_pct(acc['medium'], 2)}  "
            f"few {format_pct(acc['few'], 2)}  ({rule} rule)"
        )


@command("run", "train one method on one dataset (resumes if interrupted)", _configure_run)
def cmd_run(args: argparse.Namespace) -> int:
    import json

    from .config import resolve_config
    from .runner import run_dir_for, train

    cfg = resolve_config(args.method, args.dataset, args.preset, config_sets(args), args.seed)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=1))
        print(f"run directory: {run_dir_for(cfg, args.out).path}")
        from .sweep import required_runs

        for name, tcfg in required_runs(cfg).items():
            trun = run_dir_for(tcfg, args.out)
            print(f"needs its {name} run ({'finished' if trun.is_done() else 'trained first'}): {trun.path}")
        return 0
    if args.launcher == "slurm" or max(args.gpus_per_node or 0, args.tasks_per_node or 0) > 1:
        from .sweepcmd import submit_run

        return submit_run(cfg, args)  # a Slurm job, or DDP processes on this machine
    result = train(cfg, args.out, progress=not args.quiet)
    if result.already_done:
        print(f"already finished: {result.run.record} (delete that directory to train again)")
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
    p.add_argument("--compute", action="store_true", help="add the compute table (epochs, time, params, MACs, memory)")
    p.add_argument("--git", metavar="SHA", help="only runs made by this git revision (a prefix)")
    p.add_argument("--since", metavar="REV", help="only runs made by REV or a later revision")
    p.add_argument("--published", help="CSV of published numbers (default: <root>/published.csv)")
    p.add_argument("--plots", metavar="DIR", help="also write the figures to DIR (PNG and PDF)")
    p.add_argument("--out", help="write the table to FILE instead of printing it")
    p.add_argument("--no-cache", action="store_true", help="parse every run.json again (no parsed-record cache)")


@command("report", "leaderboards of every finished run (mean ± std over seeds)", _configure_report)
def cmd_report(args: argparse.Namespace) -> int:
    from .records import atomic_write_text, results_root
    from .report import (
        collect,
        compute_table,
        leaderboard,
        load_published,
        paired_deltas,
        parse_shot_rules,
        render,
        select_revisions,
    )
    from .report_figures import figures, png_bytes, save_figures

    root = results_root(args.root)
    finished, unfinished = collect(root, args.split, parse_shot_rules(args.shot_rule), cache=not args.no_cache)
    if args.git or args.since:
        finished = select_revisions(finished, args.git, args.since)
    board = leaderboard(finished)
    deltas = paired_deltas(finished, board, args.baseline) if args.baseline and len(board) else None
    text = render(
        board,
        unfinished,
        load_published(args.published, root),
        args.format,
        args.split,
        layout=args.layout,
        ci=args.ci,
        deltas=deltas,
        baseline=args.baseline,
        compute=compute_table(finished, board) if args.compute and len(board) else None,
        images=png_bytes(figures(finished, board)) if args.format == "html" else None,
    )
    if args.out:
        atomic_write_text(Path(args.out), text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    if args.plots:
        for path in save_figures(figures(finished, board), args.plots):
            print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- list


@command("list", "registered methods and datasets", lambda p: None)
def cmd_list(args: argparse.Namespace) -> int:
    load_plugins()
    print("methods:")
    for name in METHODS.names():
        presets = ", ".join(sorted(METHODS.get(name).presets)) or "-"
        print(f"  {name:<14} {METHODS.describe(name)}  [presets: {presets}]")
    print("datasets:")
    for name in DATASETS.names():
        print(f"  {name:<14} {DATASETS.describe(name)}")
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="ltbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, configure, fn in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(handler=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except LTBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
