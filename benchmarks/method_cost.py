"""Each method's seconds per epoch and peak memory under its ``cpu`` preset on fmnist_lt.

For every registered method with a ``cpu`` recipe for fmnist_lt (or those named with
``--methods``), one short run (``stages.*.epochs=N``, default 1) is trained in its own process
(``ltbench run``, so that peak memory is that run's alone) into a temporary results folder. The
figures come from the run's ``run.json``: wall time per stage divided by its epochs (training plus
the per-epoch val evaluation), the ``compute`` section (peak memory, parameters, MACs per image)
and the final evaluation's share of the total. Methods whose cpu recipe trains teachers first train
them too (their time is not counted in the method's stages).

    python benchmarks/method_cost.py [--methods ce,ride] [--epochs 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from ltbench.registry import METHODS, load_plugins

# the ltbench command of this interpreter (``python -m ltbench.cli`` would register no subcommands)
LTBENCH = [sys.executable, "-c", "import sys; from ltbench.cli import main; sys.exit(main())"]


def cpu_methods(preset: str = "cpu") -> list[str]:
    """The registered methods with a recipe for fmnist_lt under ``preset`` (``cpu``, or ``full``)."""
    load_plugins()
    recipes = {m: METHODS.get(m).presets.get(preset, {}) for m in METHODS.names()}
    return [m for m, cpu in recipes.items() if "fmnist_lt" in cpu or "*" in cpu]  # "*": any dataset


def measure(method: str, epochs: int, out: Path, threads: int) -> dict:
    cmd = [*LTBENCH, "run", "--method", method, "--dataset", "fmnist_lt"]
    cmd += ["--preset", "cpu", "--set", f"stages.*.epochs={epochs}", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode:
        return {"method": method, "error": (done.stderr or done.stdout).strip().splitlines()[-1]}
    path = next((out / "runs" / "fmnist_lt" / method).glob("*/run.json"))
    record = json.loads(path.read_text())
    compute, wall = record.get("compute", {}), record["wall_time"]
    stages = {s: n for s, n in compute.get("epochs", {}).items() if n > 0}
    return {
        "method": method,
        "s/epoch": " · ".join(f"{s} {wall[s] / n:.1f}" for s, n in stages.items()),
        "peak MiB": f"{compute.get('peak_memory', {}).get('mib', float('nan')):.0f}",
        "params (M)": f"{compute.get('params', {}).get('total', float('nan')) / 1e6:.3f}",
        "GMACs/img": " / ".join(f"{v / 1e9:.4f}" for v in compute.get("macs_per_image", {}).values()),
        "process s": f"{elapsed:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", help="comma-separated (default: every method with a cpu recipe for fmnist_lt)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every stage (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run (default 2)")
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else cpu_methods()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ltbench-method-cost-") as tmp:
        for method in methods:
            row = measure(method, args.epochs, Path(tmp) / method, args.threads)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(tabulate(rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
