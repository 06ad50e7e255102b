"""Wall time of the whole fmnist_lt leaderboard on this machine (target: under 60 minutes on 2 cores
for the ``cpu`` presets; about 30 minutes on one GPU for the ``full`` presets).

Trains the committed leaderboard from nothing into a fresh results folder, as ``ltbench sweep
--launcher local`` runs, in two timed phases: the leaderboard proper (every registered method that
has a ``cpu`` recipe for fmnist_lt, except those of ``COMPARISON_PHASE``, seeds 0-2, and the teachers
those need), which the 60-minute target is about, then the rows those are compared with
(``COMPARISONS``; ``--no-comparisons`` skips them). ``--streams N`` trains N runs at once from one
queue, seed by seed and heaviest method first, so that the short runs fill the ends; a teacher is
trained once, with the first seed that needs it.
Then the report that the README shows (wide layout, ``--baseline ce``, compute table, figures, HTML
page).
Prints each phase's wall time, each run's wall time from its ``run.json`` and the report's time.

``--preset full`` times the full board instead: every method with a ``full`` recipe at its official
CIFAR-100-LT schedule (PaCo too: ``COMPARISON_PHASE`` moves it out of the cpu board only), compared
with the ``ce`` and ``la`` rows of each method's backbone and schedule (``FULL_COMPARISONS``); it is
meant for a GPU (``--streams N`` runs share it) and publishes ``fmnist_lt_full.*``.

    python benchmarks/leaderboard_time.py --out /tmp/fmnist-board [--seeds 0-2] [--streams 2 --threads 1]
        [--no-comparisons] [--publish results]   # also write fmnist_lt.md, .html, .csv and figures/ there
    python benchmarks/leaderboard_time.py --preset full --streams 4 --out /tmp/fmnist-full --publish results
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from method_cost import LTBENCH, cpu_methods

TARGET_MINUTES = {"cpu": "under 60 min on 2 cores", "full": "about 30 min on one GPU"}

# (method, preset, --set overrides): the rows the cpu presets are compared with
COMPARISONS = [
    ("ldam_drw", "cpu_sam", []),  # LDAM-DRW + SAM: DeiT-LT's teacher recipe (issue: runs that need runs)
    ("ce", "cpu_ride", []),  # CE on the schedule of RIDE's and MDCS's cpu presets
    ("la", "cpu_ride", []),  # logit adjustment on that schedule
    ("ce", "cpu_vit", []),  # CE on the small ViT of LiVT's and DeiT-LT's cpu presets
    ("la", "cpu_vit", []),  # logit adjustment on that ViT
    ("ride", "cpu_distill", []),  # RIDE distilled from a 6-expert RIDE teacher
    ("livt", "cpu", ["stages.mgp.epochs=0"]),  # LiVT without MGP: Bal-BCE fine-tuning only
    ("paco", "cpu", []),  # PaCo: its key encoder and per-image key view cost about 1.8 ce cpu runs
]

# the full board's comparison rows: CE and logit adjustment on each method's backbone and schedule
# (`ce --preset full` is LDAM-DRW's CIFAR schedule, already a leaderboard row: the rows of ldam_drw,
# focal and cb, whose CIFAR schedule it is, and of crt, tau_norm and lws, which start from it), and
# DeiT-LT's teacher
FULL_COMPARISONS = [
    (baseline, f"full_{m}", [])
    for m in ("ride", "mdcs", "shike", "livt", "deit_lt", "bal_softmax", "paco")
    for baseline in ("ce", "la")
] + [("ldam_drw", "full_sam", [])]

# cost per run, most first; a method not listed is queued last. cpu: on 2 cores, from the compute table
# of the committed leaderboard; full: epochs x passes per image (DeiT-LT 1,200 epochs, LiVT 800 + 100,
# MDCS 400 epochs of two views and three experts, PaCo 400 of a query and a key view, Balanced Softmax
# 685), not measured; ce before crt, lws and tau_norm, which start from its run (a few epochs or none)
HEAVIEST_FIRST = {
    "cpu": ["mdcs", "livt", "ride", "deit_lt", "shike", "ldam_drw", "la", "ce"],
    "full": [
        "deit_lt",
        "livt",
        "mdcs",
        "paco",
        "bal_softmax",
        "shike",
        "ride",
        "ldam_drw",
        "cb",
        "focal",
        "la",
        "ce",
        "crt",
        "lws",
        "tau_norm",
    ],
}

# methods whose rows train in the comparison phase (listed in COMPARISONS), because the cpu board's
# leaderboard proper would no longer fit the hour with them; on the full board every method trains
# in the leaderboard proper
COMPARISON_PHASE = {"cpu": {"paco"}, "full": set()}


def ltbench(*args: str, threads: int) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*LTBENCH, *args], env=env, check=True)
    return time.perf_counter() - t0


def seed_list(seeds: str) -> list[str]:
    first, _, last = seeds.partition("-")
    return [str(s) for s in range(int(first), int(last or first) + 1)]


def sweep(method: str, preset: str, sets: list[str], seed: str, out: Path, dry_run: bool) -> list[str]:
    cmd = ["sweep", "--methods", method, "--datasets", "fmnist_lt", "--seeds", seed, "--preset", preset]
    cmd += [x for s in sets for x in ("--set", s)] + ["--launcher", "local", "--out", str(out)]
    return cmd + (["--dry-run"] if dry_run else [])


def leaderboard(preset: str, seeds: str, out: Path, dry_run: bool) -> list[list[str]]:
    """One single-run sweep per method and seed: every method's first seed, heaviest first (its
    teachers among them, so that a later seed finds them trained), then the next seed."""
    order = {m: i for i, m in enumerate(HEAVIEST_FIRST[preset])}
    methods = sorted(set(cpu_methods(preset)) - COMPARISON_PHASE[preset], key=lambda m: order.get(m, len(order)))
    return [sweep(m, preset, [], s, out, dry_run) for s in seed_list(seeds) for m in methods]


def comparisons(preset: str, seeds: str, out: Path, dry_run: bool) -> list[list[str]]:
    rows = FULL_COMPARISONS if preset == "full" else COMPARISONS
    return [sweep(m, p, sets, s, out, dry_run) for m, p, sets in rows for s in seed_list(seeds)]


def run_streams(commands: list[list[str]], streams: int, threads: int) -> float:
    """Run ``commands`` with ``streams`` workers pulling from one queue; the wall time in seconds."""
    todo: queue.Queue[list[str]] = queue.Queue()
    for cmd in commands:
        todo.put(cmd)
    failures: list[BaseException] = []

    def work() -> None:
        while True:
            try:
                cmd = todo.get_nowait()
            except queue.Empty:
                return
            try:
                ltbench(*cmd, threads=threads)
            except subprocess.CalledProcessError as err:  # the sweep names its failed run
                failures.append(err)

    t0 = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(max(1, streams))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        sys.exit(f"{len(failures)} sweep(s) failed: {[' '.join(e.cmd[-12:]) for e in failures]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a fresh results folder for the sweeps")
    parser.add_argument("--preset", choices=sorted(TARGET_MINUTES), default="cpu", help="the board (default cpu)")
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--streams", type=int, default=1, help="sweeps running at once (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runs (default 2)")
    parser.add_argument("--publish", help="also write the report's markdown, HTML and figures to this folder")
    parser.add_argument("--no-comparisons", action="store_true", help="train the leaderboard proper only")
    parser.add_argument("--dry-run", action="store_true", help="list the runs only")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.dry_run and (out / "runs").exists():
        sys.exit(f"{out} already holds runs; give a fresh folder so that every run is trained and timed")
    board = leaderboard(args.preset, args.seeds, out, args.dry_run)
    phases = [("leaderboard (every method x seeds, with teachers)", board)]
    if not args.no_comparisons:
        phases.append(("comparison rows", comparisons(args.preset, args.seeds, out, args.dry_run)))
    if args.dry_run:
        for _, commands in phases:
            for cmd in commands:
                ltbench(*cmd, threads=args.threads)
        return
    times = [(name, run_streams(commands, args.streams, args.threads)) for name, commands in phases]
    runs = sorted(out.glob("runs/fmnist_lt/*/*/run.json"))
    for path in runs:
        record = json.loads(path.read_text())
        print(
            f"{record['method']:<10} {record['preset']:<12} seed {record['seed']} {path.parent.name}: "
            f"{record['wall_time']['total'] / 60:.1f} min"
        )
    dest = Path(args.publish) if args.publish else out
    report = ["report", "--root", str(out), "--layout", "wide", "--baseline", "ce", "--compute", "--force"]
    stem, figures = ("fmnist_lt", "figures") if args.preset == "cpu" else (f"fmnist_lt_{args.preset}", "figures_full")
    report_s = ltbench(*report, "--plots", str(dest / figures), "--out", str(dest / f"{stem}.md"), threads=1)
    report_s += ltbench(*report, "--format", "html", "--out", str(dest / f"{stem}.html"), threads=1)
    report_s += ltbench(*report, "--format", "csv", "--out", str(dest / f"{stem}.csv"), threads=1)
    print(f"{len(runs)} runs, {args.streams} stream(s) of {args.threads} thread(s):")
    for (name, seconds), target in zip(times, [f" (target: {TARGET_MINUTES[args.preset]})", ""]):
        print(f"  {name}: {seconds / 60:.1f} min{target}")
    print(f"report (markdown, figures, HTML, CSV): {report_s:.0f} s")


if __name__ == "__main__":
    main()
