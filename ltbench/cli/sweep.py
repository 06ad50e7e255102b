"""``ltbench sweep`` and ``ltbench status``, and the launcher and cluster flags that ``ltbench run``
shares with ``sweep``.

- ``sweep --methods A,B --datasets X --seeds 0-2 [--preset P] [--set K=V] --launcher slurm``
  expands the grid and submits it as one job array (several above the cluster's MaxArraySize);
  running the same command again, or ``sweep --relaunch DIR``, submits only the runs that are
  neither finished nor queued/running, and they resume from their checkpoints.
- ``status [--sweep DIR]`` shows each run's state from its run directory and the scheduler, with
  the last lines of the error of every failed run.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .common import add_config_args, command, config_sets, print_summary

if TYPE_CHECKING:  # the heavy imports wait until a command needs them
    from ..cluster.slurm import ClusterConfig
    from ..cluster.sweep import RunStatus, Sweep
    from ..config import Config

LAUNCHER_HELP = (
    "where jobs run: local (this machine; `run` trains in this process, `sweep` runs its jobs "
    "one at a time), slurm (sbatch via submitit), debug (`sweep` only: in this process, pdb on errors)"
)


def add_launcher_args(p: argparse.ArgumentParser, launchers: tuple[str, ...] = ("local", "slurm", "debug")) -> None:
    """``--launcher``, the cluster options (flags override the profile file) and ``--wait``."""
    g = p.add_argument_group("launcher and cluster options (docs/slurm.md)")
    g.add_argument("--launcher", choices=launchers, help=LAUNCHER_HELP + " (default: local)")
    g.add_argument(
        "--cluster-profile",
        metavar="FILE",
        help="TOML file of cluster options (default: $LTBENCH_CLUSTER_PROFILE if set)",
    )
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument(
        "--time",
        help="time limit per job: minutes or [D-]HH:MM:SS (default 60); jobs that "
        "reach it checkpoint and requeue themselves",
    )
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", type=int, help="GPUs per node; one DDP process per GPU")
    g.add_argument("--tasks-per-node", type=int, help="DDP processes per node (default: one per GPU)")
    g.add_argument("--cpus-per-task", type=int, help="CPUs per task (GPU jobs: 8 per GPU by default)")
    g.add_argument("--mem", help="memory per node, e.g. 64G")
    g.add_argument("--array-parallelism", type=int, help="most runs at once (Slurm default: no limit; local: 1)")
    g.add_argument("--max-timeouts", type=int, help="requeues after reaching the time limit (default 3)")
    g.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="extra sbatch option, e.g. --sbatch qos=high --sbatch exclusive (repeatable)",
    )
    g.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run before each job, e.g. 'module load cuda' (repeatable)",
    )
    g.add_argument("--wait", action="store_true", help="slurm: wait until every job has ended, then show the states")


def cluster_from_args(
    args: argparse.Namespace, base: ClusterConfig | None = None, profile_from_env: bool = True
) -> ClusterConfig:
    """The cluster options: ``base`` (a relaunched sweep's), the profile file, then the flags."""
    from ..cluster.slurm import cluster_config

    sbatch = {}
    for item in args.sbatch:
        key, has_value, value = item.partition("=")
        sbatch[key.strip().lstrip("-")] = value if has_value else True
    profile = args.cluster_profile or (os.environ.get("LTBENCH_CLUSTER_PROFILE") if profile_from_env else None)
    return cluster_config(
        profile,
        base,
        partition=args.partition,
        account=args.account,
        time=args.time,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        array_parallelism=args.array_parallelism,
        max_timeouts=args.max_timeouts,
        sbatch=sbatch,
        setup=args.setup,
    )


def render_status(statuses: list[RunStatus]) -> str:
    """A table of run states, then the error of each failed run, then the count per state."""
    from collections import Counter

    from tabulate import tabulate

    if not statuses:
        return "No runs.\n"
    rows = [
        [s.state, s.method, s.dataset, s.seed, s.run_id, s.job, s.detail.splitlines()[0] if s.detail else ""]
        for s in statuses
    ]
    text = (
        tabulate(
            rows,
            headers=["state", "method", "dataset", "seed", "run_id", "job", "detail"],
            tablefmt="github",
            disable_numparse=True,
        )
        + "\n"
    )
    for s in statuses:
        if s.state == "failed" and "\n" in s.detail:
            text += f"\nfailed: {s.method} on {s.dataset}, seed {s.seed} ({s.run_id}):\n"
            text += "".join(f"  | {line}\n" for line in s.detail.splitlines()[1:])
    counts = Counter(s.state for s in statuses)
    return text + "\n" + ", ".join(f"{n} {state}" for state, n in counts.most_common()) + "\n"


def submit_and_report(sweep: Sweep, args: argparse.Namespace) -> int:
    """Submit what is unfinished (or show it, with --dry-run), print the states; 1 if any failed."""
    from ..cluster.slurm import submission_preview
    from ..cluster.sweep import status, submit, wait

    if args.dry_run:
        print(render_status(status(sweep)), end="")
        if sweep.launcher == "slurm":
            print("\n" + submission_preview(sweep.cluster, sweep.jobs_folder, len(sweep.runs)), end="")
        return 0
    submitted = submit(sweep)
    print(
        f"sweep {sweep.path}: {len(submitted)} of {len(sweep.runs)} runs submitted"
        + ("" if submitted else " (the others are finished, queued or running)")
    )
    statuses = wait(sweep) if sweep.launcher == "slurm" and args.wait else status(sweep)
    print(render_status(statuses), end="")
    if sweep.launcher == "slurm" and not args.wait:
        print(f"follow with: ltbench status --sweep {sweep.path}")
    return 1 if any(s.state == "failed" for s in statuses) else 0


def submit_run(cfg: Config, args: argparse.Namespace) -> int:
    """``ltbench run --launcher slurm`` (or local with several DDP processes): a sweep of one run,
    so that ``status`` and ``--relaunch`` work for it too."""
    from ..cluster.sweep import Sweep

    sweep = Sweep.open([cfg], args.launcher or "local", cluster_from_args(args), args.out)
    code = submit_and_report(sweep, args)
    run = sweep.run_dir(cfg.run_id())
    if run.is_done():
        print_summary(run.read_record(), cfg.eval.shot_rule)
    return code


# ----------------------------------------------------------------------------- sweep


def _configure_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", help="comma-separated methods (see `ltbench list`)")
    p.add_argument("--datasets", help="comma-separated datasets")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0-2 or 0,1,5 (default 0)")
    add_config_args(p)
    p.add_argument("--name", help="sweep folder under <results>/sweeps (default: a hash of the grid's run ids)")
    p.add_argument("--relaunch", metavar="DIR", help="resubmit exactly the unfinished runs of the sweep in DIR")
    p.add_argument("--dry-run", action="store_true", help="show the runs (and the Slurm submission); submit nothing")
    add_launcher_args(p)


def _names(text: str | None, what: str) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--{what} is required (comma-separated), unless --relaunch DIR is given")
    return names


@command(
    "sweep",
    "run a grid of methods x datasets x seeds as one Slurm job array (or here, one at a time)",
    _configure_sweep,
)
def cmd_sweep(args: argparse.Namespace) -> int:
    from ..cluster.sweep import Sweep, expand_grid, parse_seeds

    if args.relaunch:
        if args.methods or args.datasets or args.sets or args.preset or args.root or args.name:
            raise ConfigError(
                "--relaunch takes the runs from the sweep's manifest; give only launcher and cluster options with it"
            )
        sweep = Sweep.load(args.relaunch)
        if args.launcher and args.launcher != sweep.launcher:
            raise ConfigError(f"sweep {sweep.path} was launched with --launcher {sweep.launcher}")
        sweep.manifest["cluster"] = cluster_from_args(args, sweep.cluster, profile_from_env=False).to_dict()
    else:
        configs = expand_grid(
            _names(args.methods, "methods"),
            _names(args.datasets, "datasets"),
            parse_seeds(args.seeds),
            args.preset,
            config_sets(args),
        )
        from ..records import writable_dir

        writable_dir(args.out, "--out")
        sweep = Sweep.open(configs, args.launcher or "local", cluster_from_args(args), args.out, args.name)
    return submit_and_report(sweep, args)


# ----------------------------------------------------------------------------- status


def _configure_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", metavar="DIR", help="one sweep's runs (default: every run under the results root)")
    p.add_argument("--root", help="results directory (default: $LTBENCH_RESULTS or ./results)")


@command(
    "status", "state of each run: done, running, pending, failed (with its error) or not submitted", _configure_status
)
def cmd_status(args: argparse.Namespace) -> int:
    from ..cluster.sweep import Sweep, all_statuses, status

    statuses = status(Sweep.load(args.sweep)) if args.sweep else all_statuses(args.root)
    print(render_status(statuses), end="")
    return 0
