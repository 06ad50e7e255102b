"""benchmarks/gpu_check.py on the CPU with tiny shapes, so the GPU node's check cannot rot: the
same parts (smoke in each precision, SIGKILL + resume, DDP, a relaunch with fewer processes) run
with gloo and the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_passes_on_the_cpu_with_tiny_shapes(tmp_path):
    out = tmp_path / "summary.json"
    argv = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--methods", "ce", "--budget", "600"]
    done = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, timeout=700)
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads(out.read_text())["checks"]
    outcomes = {(c["part"], c.get("precision", "")): c["outcome"] for c in checks}
    assert outcomes == {
        ("smoke", "fp32"): "ok",
        ("smoke", "bf16"): "ok",
        ("resume", "fp32"): "ok",
        ("ddp", ""): "ok",
        ("fewer", ""): "ok",
    }
    (resume,) = [c for c in checks if c["part"] == "resume"]
    assert resume["counts_equal"] and resume["resumes"] == 1
    (fewer,) = [c for c in checks if c["part"] == "fewer"]
    assert (fewer["world_size"], fewer["relaunch_world_size"], fewer["resumes"]) == (2, 1, 1)
