"""ltbench: train and compare long-tailed recognition methods from scratch on one code path.

Subcommands register themselves with :func:`~ltbench.cli.common.command` in the modules listed in
``COMMAND_MODULES``. User errors (:class:`~ltbench.errors.LTBenchError`) print one message and exit
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from ..errors import LTBenchError, user_message
from .common import COMMANDS

COMMAND_MODULES: tuple[str, ...] = ("run", "data", "sweep", "show")


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    parser = argparse.ArgumentParser(prog="ltbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, configure, fn in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(handler=fn)
    return parser


def _configure_logging(quiet: bool) -> None:
    """``--quiet`` silences the console only: a run's ``log.txt`` (a handler on the ``ltbench``
    logger) still receives every line, so a quiet run can be followed and diagnosed afterwards."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=logging.INFO, handlers=[console])
    logging.getLogger("ltbench").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(quiet=getattr(args, "quiet", False))
    try:
        return args.handler(args)
    except LTBenchError as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ltbench show ID | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(
            f"error: no space left on the device{where} ({err.strerror}). Results are written atomically: "
            "what was there is intact, and a run keeps its last checkpoint. Free some space (or give --out "
            "on another disk), then run the same command again to resume",
            file=sys.stderr,
        )
        return 2
