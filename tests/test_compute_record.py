"""The ``compute`` section of run.json: parameters, MACs per image (all heads, routed), peak memory,
epochs per stage; written by the trainer so that the report reads it and never recomputes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltbench.config import resolve_config
from ltbench.evaluate import peak_memory
from ltbench.method import DataInfo
from ltbench.models.compute import count_macs
from ltbench.registry import METHODS
from ltbench.runner import train


def test_smoke_run_records_its_compute(results):
    cfg = resolve_config("ce", "synthetic_lt", "smoke")
    record = train(cfg, results, progress=False).record
    compute = record["compute"]
    method = METHODS.get("ce")(cfg, DataInfo(record["num_classes"], 3, 16, np.asarray(record["train_counts"])))
    n_params = sum(p.numel() for p in method.parameters())
    assert compute["params"] == {"total": n_params, "trainable": n_params}
    x = torch.zeros(1, 3, 16, 16)
    with torch.no_grad():  # ResNet-32 on one 16 x 16 image: a fixed count
        assert compute["macs_per_image"] == {"all": count_macs(method, lambda: method.predict(x))}
    assert compute["epochs"] == {"train": cfg.stages["train"].epochs}
    assert compute["peak_memory"]["kind"] == "cpu_peak_rss" and compute["peak_memory"]["mib"] > 50


def test_peak_memory_is_the_process_peak_rss_on_the_cpu():
    before = peak_memory(torch.device("cpu"))["mib"]
    block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
    after = peak_memory(torch.device("cpu"))["mib"]
    assert after >= before and after >= block.nbytes / 2**20


def test_ride_reports_all_experts_and_routed_macs():
    cfg = resolve_config("ride", "synthetic_lt", "smoke")
    method = METHODS.get("ride")(cfg, DataInfo(10, 3, 16, np.arange(10, 0, -1) * 10))
    method.enter_stage("train")
    method.eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        per_image = count_macs(method.net, lambda: method.net(x[:1]))
    assert method.macs_per_image(x) == {"all": pytest.approx(per_image)}  # no router: no routed figure
    method.enter_stage("router")
    method.eval()
    with torch.no_grad():
        shared = method.net.forward_trunk(x[:1])
        first = count_macs(method.net, lambda: method.net.forward_trunk(x[:1]))
        first += count_macs(method.net, lambda: method.net.forward_expert(shared, 0))
        method.router.decide.bias.fill_(-1e4)  # router 0 stops every image after expert 0
    stopped = method.macs_per_image(x)
    assert stopped["all"] == pytest.approx(per_image)
    assert first < stopped["routed"] < first + 2_000  # expert 0 plus one small router decision
    with torch.no_grad():
        method.router.decide.bias.fill_(1e4)  # every image goes through all three experts
    passed = method.macs_per_image(x)["routed"]
    assert per_image < passed < per_image + 4_000  # all experts plus two router decisions
