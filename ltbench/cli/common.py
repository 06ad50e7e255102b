"""Pieces every ``ltbench`` subcommand module shares: the command registry, the options that select
a configuration, and the summary printed after a run. A leaf: it imports no other command module."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]
COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = []


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register ``fn(args) -> exit status`` as the subcommand ``name``."""

    def decorator(fn: Handler) -> Handler:
        COMMANDS.append((name, help, configure, fn))
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


def print_summary(record: dict, rule: str = "strict") -> None:
    from ..metrics import format_pct, summarize

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
    skipped = (record.get("dataset_details") or {}).get("skipped_corrupt") or {}
    for split, images in skipped.items():
        if images:
            print(
                f"note: {len(images)} unreadable {split} images were skipped (data.skip_corrupt); "
                f"{split} results leave them out: {', '.join(sorted(images)[:5])}"
            )
