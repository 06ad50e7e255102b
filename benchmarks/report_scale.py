"""Speed of ``ltbench report`` over 10,000 run records of iNaturalist size (target: under 5 s).

Each synthetic ``run.json`` is what the trainer writes for an iNaturalist-2018 run (``indent=1``,
8,142-class lists): the training counts (the recorded iNaturalist class counts from
``../shared/data/class_counts/inat2018.json`` when present), the test split's per-class correct
and total (3 images per class, as iNaturalist's val = test split), the resolved configuration, the
compute section and the usual scalars. The grid is 50 methods x 40 configuration variants x 5
seeds (2,000 leaderboard rows), written once into a temporary folder.

Reported (median over the repeats):

- ``cold``: the first report of the tree: parse every ``run.json`` and write the parsed-record cache;
- ``warm``: a report once the cache holds the tree (the usual case: a few new runs between reports):
  read the cache, the per-run metrics (vectorised), the leaderboard, and the markdown table.

Wall and CPU time are both printed: on a shared machine the wall time includes waiting for a core.

    python benchmarks/report_scale.py [--records 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics as stats
import tempfile
import time
from pathlib import Path

import numpy as np
from data_info import inat_counts

TARGET_SECONDS = 5.0
METHODS, VARIANTS = 50, 40


def list_text(values: np.ndarray, depth: int) -> str:
    """A JSON list as ``json.dumps(..., indent=1)`` writes it with its items at ``depth``."""
    return "[\n" + ",\n".join(" " * depth + str(v) for v in values.tolist()) + "\n" + " " * (depth - 1) + "]"


def write_tree(root: Path, records: int, counts: np.ndarray, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    total = np.full(len(counts), 3)
    counts_text, total_text = list_text(counts, 2), list_text(total, 6)  # as in run.json
    pool = [list_text(rng.binomial(3, p, size=len(counts)), 6) for p in np.linspace(0.3, 0.8, 64)]
    seeds = max(1, records // (METHODS * VARIANTS))
    n = 0
    for m in range(METHODS):
        for v in range(VARIANTS):
            for s in range(seeds):
                if n == records:
                    return
                run_id = f"{m:03d}{v:03d}{s:06d}"
                config = {
                    "method_name": f"m{m:02d}",
                    "dataset_name": "inat2018",
                    "method": {"alpha": v % 5, "beta": v // 5},
                    "stages": {"train": {"epochs": 90 + v, "batch_size": 256}},
                    "train": {"seed": s},
                    "preset": "paper",
                }
                scalars = {
                    "schema": 1,
                    "run_id": run_id,
                    "variant": f"{m:02d}{v:03d}aaaaaaa",
                    "method": f"m{m:02d}",
                    "dataset": "inat2018",
                    "preset": "paper",
                    "seed": s,
                    "dataset_fingerprint": "inat2018-fp",
                    "num_classes": len(counts),
                    "selection": {"policy": "last", "stage": "train", "epoch": 90},
                    "config": config,
                    "git_sha": "c" * 40,
                    "device": "NVIDIA H100",
                    "world_size": 8,
                    "wall_time": {"train": 36000.0 + v, "total": 36000.0 + v},
                    "compute": {
                        "params": {"total": 25_000_000, "trainable": 25_000_000},
                        "macs_per_image": {"all": 4.1e9},
                        "peak_memory": {"kind": "cuda_max_allocated", "mib": 30000.0},
                        "epochs": {"train": 90 + v},
                    },
                }
                scalars["train_counts"] = "@counts"
                scalars["splits"] = {"test": {"heads": {"main": {"correct": "@correct", "total": "@total"}}}}
                text = json.dumps(scalars, indent=1).replace('"@counts"', counts_text).replace('"@total"', total_text)
                text = text.replace('"@correct"', pool[(m * 7 + v * 3 + s) % len(pool)])
                path = root / "runs" / "inat2018" / f"m{m:02d}" / run_id
                path.mkdir(parents=True)
                (path / "run.json").write_text(text)
                n += 1


def report_once(root: Path) -> dict[str, float]:
    from ltbench.report import collect, leaderboard, load_published, render

    t0, c0 = time.perf_counter(), time.process_time()
    finished, unfinished = collect(root)
    t1 = time.perf_counter()
    board = leaderboard(finished)
    t2 = time.perf_counter()
    render(board, unfinished, load_published(None, root))
    t3, c3 = time.perf_counter(), time.process_time()
    return {
        "collect": t1 - t0,
        "leaderboard": t2 - t1,
        "render": t3 - t2,
        "total": t3 - t0,
        "cpu": c3 - c0,
        "rows": len(board),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", help="keep the generated tree here (default: a temporary folder, removed)")
    parser.add_argument("--warm-only", action="store_true", help="with --dir: time reports from the cache kept there")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="ltbench-report-bench-"))
    os.environ["LTBENCH_CACHE"] = str(work / "cache")
    counts = inat_counts()
    try:
        root = work / "results"
        if not (root / "runs").is_dir():
            t0 = time.perf_counter()
            write_tree(root, args.records, counts)
            print(f"wrote {args.records} records in {time.perf_counter() - t0:.1f} s under {root}")
        size = sum(p.stat().st_size for p in root.glob("runs/*/*/*/run.json"))
        print(f"{args.records} run.json files, {len(counts)} classes each, {size / 2**30:.2f} GiB in all")
        import ltbench.report  # noqa: F401  (imports are not what is measured)

        cold, warm = [], []
        for _ in range(args.repeats):
            if not args.warm_only:
                shutil.rmtree(work / "cache", ignore_errors=True)
                cold.append(report_once(root))
            warm.append(report_once(root))
        for name, runs in (("cold (parse every run.json)", cold), ("warm (parsed-record cache)", warm)):
            if not runs:
                continue
            parts = ", ".join(
                f"{k} {stats.median(r[k] for r in runs):.2f} s" for k in ("collect", "leaderboard", "render")
            )
            wall, cpu = stats.median(r["total"] for r in runs), stats.median(r["cpu"] for r in runs)
            print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s CPU ({parts}; {runs[0]['rows']} rows)")
        best = stats.median(r["total"] for r in warm)
        print(f"target: a report over {args.records} records in under {TARGET_SECONDS:.0f} s (warm): {best:.2f} s")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
