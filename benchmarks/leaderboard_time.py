"""Wall time of the whole fmnist_lt leaderboard on this machine (target: under 60 minutes).

Runs every registered method that has a ``cpu`` recipe for fmnist_lt, seeds 0-2, as one
``ltbench sweep --launcher local`` into a fresh results folder, then the report that the README
shows (wide layout, ``--baseline ce``, compute table, HTML page and figures). Prints the sweep's
wall time, each run's wall time from its ``run.json``, and the report's time.

    python benchmarks/leaderboard_time.py --out /tmp/fmnist-board [--seeds 0-2] [--threads 2] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from method_cost import LTBENCH, cpu_methods

TARGET_MINUTES = 60


def ltbench(*args: str, threads: int) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*LTBENCH, *args], env=env, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a fresh results folder for the sweep")
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runs (default 2)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs only")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.dry_run and (out / "runs").exists():
        sys.exit(f"{out} already holds runs; give a fresh folder so that every run is trained and timed")
    methods = ",".join(cpu_methods())
    sweep = ["sweep", "--methods", methods, "--datasets", "fmnist_lt", "--seeds", args.seeds, "--preset", "cpu"]
    sweep += ["--launcher", "local", "--out", str(out)] + (["--dry-run"] if args.dry_run else [])
    seconds = ltbench(*sweep, threads=args.threads)
    if args.dry_run:
        return
    runs = sorted(out.glob("runs/fmnist_lt/*/*/run.json"))
    for path in runs:
        record = json.loads(path.read_text())
        print(f"{record['method']:<12} seed {record['seed']}: {record['wall_time']['total'] / 60:.1f} min")
    report = ["report", "--root", str(out), "--layout", "wide", "--baseline", "ce", "--compute"]
    report_s = ltbench(*report, "--plots", str(out / "figures"), "--out", str(out / "fmnist_lt.md"), threads=1)
    report_s += ltbench(*report, "--format", "html", "--out", str(out / "fmnist_lt.html"), threads=1)
    print(f"{len(runs)} runs of {methods}: {seconds / 60:.1f} min (target: under {TARGET_MINUTES} min)")
    print(f"report (markdown, figures, HTML): {report_s:.0f} s")


if __name__ == "__main__":
    main()
