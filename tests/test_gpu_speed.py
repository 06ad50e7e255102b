"""benchmarks/gpu_speed.py runs end to end on the CPU with tiny shapes, so that the GPU benchmark
cannot rot between the times a GPU is lent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_gpu_speed_runs_tiny_on_the_cpu(tmp_path, results, capsys):
    import gpu_speed

    out = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--tiny", "--presets", "ce", "--steps", "2", "--warmup", "1", "--out", str(out)]
    assert gpu_speed.main([*argv, "--work", str(tmp_path), "--set", "model.arch=resnet8"]) == 0
    (row,) = json.loads(out.read_text())
    assert row["preset"] == "ce" and row["batch"] == 32
    assert row["trainer_img_s"] > 0 and row["bare_img_s"] > 0
    assert row["ratio"] == pytest.approx(row["trainer_img_s"] / row["bare_img_s"], abs=2e-3)
    assert row["gpu_util_mean"] is None  # no GPU: no samples, and the table says n/a
    assert "n/a" in capsys.readouterr().out


def test_utilisation_sampler_reads_in_a_thread():
    import gpu_speed
    import torch

    util = gpu_speed.Utilisation(torch.device("cpu"), every=0.01)
    util.read = iter([10.0, 30.0]).__next__  # a fake reader: two samples, then it stops
    with util:
        util.thread.join(timeout=5)
    assert util.samples == [10.0, 30.0] and util.mean == 20.0
