"""Wall time of the whole fmnist_lt leaderboard on this machine (target: under 60 minutes).

Trains the committed leaderboard from nothing into a fresh results folder: every registered method
that has a ``cpu`` recipe for fmnist_lt, and the rows those are compared with (``COMPARISONS``),
seeds 0-2, as ``ltbench sweep --launcher local`` runs. ``--streams N`` runs N sweeps at once (each
trains its runs one at a time; a teacher two streams need is trained once, the other waits for it).
Then the report that the README shows (wide layout, ``--baseline ce``, compute table, figures, HTML
page). Prints the wall time of the whole, each run's wall time from its ``run.json`` and the
report's time.

    python benchmarks/leaderboard_time.py --out /tmp/fmnist-board [--seeds 0-2] [--streams 2 --threads 1]
        [--publish results]   # also write fmnist_lt.md, fmnist_lt.html and figures/ there
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from method_cost import LTBENCH, cpu_methods

TARGET_MINUTES = 60

# (methods, preset, --set overrides): the rows the cpu presets are compared with
COMPARISONS = [
    ("ldam_drw", "cpu_sam", []),  # LDAM-DRW + SAM: DeiT-LT's teacher recipe (issue: runs that need runs)
    ("ce", "cpu_ride", []),  # CE on the schedule of RIDE's and MDCS's cpu presets
    ("la", "cpu_ride", []),  # logit adjustment on that schedule
    ("ce", "cpu_vit", []),  # CE on the small ViT of LiVT's and DeiT-LT's cpu presets
    ("la", "cpu_vit", []),  # logit adjustment on that ViT
    ("ride", "cpu_distill", []),  # RIDE distilled from a 6-expert RIDE teacher
    ("livt", "cpu", ["stages.mgp.epochs=0"]),  # LiVT without MGP: Bal-BCE fine-tuning only
]


def ltbench(*args: str, threads: int) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*LTBENCH, *args], env=env, check=True)
    return time.perf_counter() - t0


def sweeps(seeds: str, out: Path, dry_run: bool) -> list[list[str]]:
    grid = [(",".join(cpu_methods()), "cpu", []), *COMPARISONS]
    commands = []
    for methods, preset, sets in grid:
        cmd = ["sweep", "--methods", methods, "--datasets", "fmnist_lt", "--seeds", seeds, "--preset", preset]
        cmd += [x for s in sets for x in ("--set", s)] + ["--launcher", "local", "--out", str(out)]
        commands.append(cmd + (["--dry-run"] if dry_run else []))
    return commands


def run_streams(commands: list[list[str]], streams: int, threads: int) -> None:
    """The first (largest) sweep in one stream, the others shared out in order among the rest."""
    queues: list[list[list[str]]] = [[] for _ in range(max(1, streams))]
    for i, cmd in enumerate(commands):
        queues[0 if i == 0 or streams == 1 else 1 + (i - 1) % (streams - 1)].append(cmd)
    failures: list[BaseException] = []

    def work(queue: list[list[str]]) -> None:
        for cmd in queue:
            try:
                ltbench(*cmd, threads=threads)
            except subprocess.CalledProcessError as err:  # the sweep names its failed runs
                failures.append(err)

    workers = [threading.Thread(target=work, args=(q,)) for q in queues if q]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        sys.exit(f"{len(failures)} sweep(s) failed: {[' '.join(e.cmd[-8:]) for e in failures]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a fresh results folder for the sweeps")
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--streams", type=int, default=1, help="sweeps running at once (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runs (default 2)")
    parser.add_argument("--publish", help="also write the report's markdown, HTML and figures to this folder")
    parser.add_argument("--dry-run", action="store_true", help="list the runs only")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.dry_run and (out / "runs").exists():
        sys.exit(f"{out} already holds runs; give a fresh folder so that every run is trained and timed")
    commands = sweeps(args.seeds, out, args.dry_run)
    if args.dry_run:
        for cmd in commands:
            ltbench(*cmd, threads=args.threads)
        return
    t0 = time.perf_counter()
    run_streams(commands, args.streams, args.threads)
    seconds = time.perf_counter() - t0
    runs = sorted(out.glob("runs/fmnist_lt/*/*/run.json"))
    for path in runs:
        record = json.loads(path.read_text())
        print(
            f"{record['method']:<10} {record['preset']:<12} seed {record['seed']} {path.parent.name}: "
            f"{record['wall_time']['total'] / 60:.1f} min"
        )
    dest = Path(args.publish) if args.publish else out
    report = ["report", "--root", str(out), "--layout", "wide", "--baseline", "ce", "--compute", "--force"]
    report_s = ltbench(*report, "--plots", str(dest / "figures"), "--out", str(dest / "fmnist_lt.md"), threads=1)
    report_s += ltbench(*report, "--format", "html", "--out", str(dest / "fmnist_lt.html"), threads=1)
    report_s += ltbench(*report, "--format", "csv", "--out", str(dest / "fmnist_lt.csv"), threads=1)
    print(f"{len(runs)} runs, {args.streams} stream(s): {seconds / 60:.1f} min (target: under {TARGET_MINUTES} min)")
    print(f"report (markdown, figures, HTML): {report_s:.0f} s")


if __name__ == "__main__":
    main()
