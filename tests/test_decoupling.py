"""Decoupling (crt, tau_norm, lws): one `ce` run feeds all three and is trained once, each run
records it; tau is chosen on val over the official grid; the classifier stages train what the
official code trains; resume; the paper-scale model takes a step."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import SMALL_SYNTHETIC, long_tailed_info, stop_at_step, take_step

from ltbench.config import resolve_config
from ltbench.data import Batch
from ltbench.errors import ConfigError
from ltbench.methods.tau_norm import TAU_GRID, tau_normalized
from ltbench.registry import METHODS, load_plugins
from ltbench.runner import build_method, run_dir_for, train
from ltbench.trainer import TrainingInterrupted

DECOUPLED = ("crt", "tau_norm", "lws")


def smoke(name: str, *sets: str):
    return resolve_config(name, "synthetic_lt", "smoke", [*SMALL_SYNTHETIC, *sets])


def stamps(run) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in run.path.iterdir()}


@pytest.mark.slow
def test_one_ce_run_feeds_crt_tau_norm_and_lws_and_is_trained_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ltbench")
    ce_cfg = METHODS.get("crt").requires(smoke("crt"))["representation"]
    ce_run = run_dir_for(ce_cfg, tmp_path)
    records, before = {}, None
    for name in DECOUPLED:
        records[name] = train(smoke(name), tmp_path, progress=False).record
        if before is None:  # the first one trained it
            assert ce_run.is_done() and "its representation: trained run" in caplog.text
            before = stamps(ce_run)
        else:
            assert stamps(ce_run) == before  # neither trained nor re-saved again
    assert [p.name for p in (tmp_path / "runs" / "synthetic_lt" / "ce").iterdir()] == [ce_run.path.name]
    assert caplog.text.count("its representation: reusing the finished run") == 2
    for record in records.values():
        entry = record["teachers"]["representation"]
        assert (entry["run_id"], entry["method"], entry["run_dir"]) == (ce_cfg.run_id(), "ce", str(ce_run.path))
    # tau_norm: tau from the official grid, chosen on val; the final val evaluation is at that tau
    chosen = records["tau_norm"]["selection"]["chosen_on_val"]
    assert chosen["tau"] in TAU_GRID and len(chosen["val_balanced_by_tau"]) == 21
    best = max(chosen["val_balanced_by_tau"].values())
    assert chosen["val_balanced_by_tau"][f"{chosen['tau']:g}"] == best
    main = records["tau_norm"]["splits"]["val"]["heads"]["main"]
    correct, total = np.array(main["correct"], float), np.array(main["total"], float)
    assert np.mean(correct[total > 0] / total[total > 0]) * 100 == pytest.approx(best)
    assert "tau=0" not in records["tau_norm"]["splits"]["test"]["heads"]  # the grid never sees test


def test_requires_the_ce_run_of_the_same_preset_seed_and_data():
    cfg = resolve_config("lws", "fmnist_lt", "cpu", ["data.val_per_class=7"], seed=2)
    ce = METHODS.get("lws").requires(cfg)["representation"]
    assert ce.run_id() == resolve_config("ce", "fmnist_lt", "cpu", ["data.val_per_class=7"], seed=2).run_id()
    assert cfg.model == ce.model  # the row's backbone is its representation's
    other = resolve_config("crt", "fmnist_lt", "cpu", ["method.representation_preset=cpu_ride"])
    assert METHODS.get("crt").requires(other)["representation"].preset == "cpu_ride"


def test_presets_carry_the_official_classifier_stages():
    load_plugins()
    for name in DECOUPLED:
        assert {"paper", "cpu", "smoke"} <= set(METHODS.get(name).presets)
    crt = resolve_config("crt", "cifar100_lt", "paper").stages["crt"]
    lws = resolve_config("lws", "cifar10_lt", "paper").stages["lws"]
    for stage, epochs in ((crt, 10), (lws, 5)):  # cls_crt.yaml, cls_lws.yaml
        assert (stage.epochs, stage.batch_size, stage.sampler) == (epochs, 512, "class_aware")
        assert (stage.optim.lr, stage.optim.momentum, stage.optim.weight_decay) == (0.2, 0.9, 5e-4)
        assert (stage.schedule.name, stage.schedule.min_lr, stage.schedule.warmup_epochs) == ("cosine", 0.0, 0)
    assert resolve_config("tau_norm", "cifar10_lt", "paper").stages == {}  # no training


def test_tau_normalisation_by_hand():
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    assert torch.equal(tau_normalized(w, 0.0), w)
    assert torch.allclose(tau_normalized(w, 1.0), torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(tau_normalized(w, 2.0), torch.tensor([[0.12, 0.16], [1.0, 0.0], [0.0, 0.5]]))
    assert TAU_GRID[:3] == (0.0, 0.1, 0.2) and TAU_GRID[-1] == 2.0 and len(TAU_GRID) == 21


def paper_ce(num_classes: int = 100):
    cfg = resolve_config("ce", "cifar100_lt", "paper")
    ce = build_method(cfg, long_tailed_info(num_classes, 32))
    ce.eval().requires_grad_(False)
    return ce


def test_tau_is_chosen_on_val_by_balanced_accuracy_smallest_on_a_tie():
    cfg = resolve_config("tau_norm", "cifar100_lt", "paper")
    method = build_method(cfg, long_tailed_info(100, 32), {"representation": paper_ce()})

    def evaluate():  # val counts: tau 0.5 and 1.2 tie at the best balanced accuracy
        assert method._grid_heads
        acc = {0.5: 9, 1.2: 9}
        return {"heads": {f"tau={t:g}": {"correct": [acc.get(t, 3)] * 100, "total": [10] * 100} for t in TAU_GRID}}

    chosen = method.choose_on_val(evaluate)
    assert chosen["tau"] == 0.5 and method.tau.item() == 0.5
    assert chosen["val_balanced_by_tau"]["1.2"] == pytest.approx(90.0)
    assert not method._grid_heads and method.predict_heads(torch.randn(2, 3, 32, 32)) == {}
    x = torch.randn(3, 3, 32, 32)
    net = method.net.eval()
    expected = net.forward_features(x) @ (net.fc.weight / net.fc.weight.norm(dim=1, keepdim=True) ** 0.5).t()
    assert torch.allclose(method.predict(x), expected, atol=1e-6)  # no bias, as tau_norm.py
    with pytest.raises(ConfigError, match="val split"):
        method.choose_on_val(None)
    fixed = build_method(resolve_config("tau_norm", "cifar100_lt", "paper", ["method.tau=1.0"]),
                         long_tailed_info(100, 32), {"representation": paper_ce()})  # fmt: skip
    assert fixed.choose_on_val(None) is None and fixed.tau.item() == 1.0


@pytest.mark.parametrize("name", ["crt", "lws"])
def test_paper_scale_classifier_stage_takes_a_step_training_the_classifier_only(name):
    cfg = resolve_config(name, "cifar100_lt", "paper")
    ce = paper_ce()
    method = build_method(cfg, long_tailed_info(100, 32), {"representation": ce})
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == ({"net.fc.weight", "net.fc.bias"} if name == "crt" else {"scales"})
    if name == "crt":  # re-initialised, not the CE classifier
        assert not torch.equal(method.net.fc.weight, ce.net.fc.weight)
    else:
        assert torch.equal(method.net.fc.weight, ce.net.fc.weight) and torch.equal(method.scales, torch.ones(100))
    bn_before = method.net.stem.bn.running_mean.clone()
    batch = Batch([torch.randn(4, 3, 32, 32)], torch.tensor([0, 1, 50, 99]), torch.arange(4))
    take_step(method, name, batch, 1, cfg.stages[name].epochs)
    assert all((p.grad is not None) == p.requires_grad for p in method.parameters())
    assert not torch.equal(method.net.stem.bn.running_mean, bn_before)  # train mode, as run_networks.py
    assert torch.equal(ce.net.stem.bn.running_mean, bn_before)  # the `ce` run's network is untouched


@pytest.mark.slow
@pytest.mark.parametrize("name", ["crt", "lws"])
def test_classifier_stage_resumes_mid_epoch(tmp_path, name):
    cfg = smoke(name)
    reference = train(cfg, tmp_path / "reference", progress=False).record
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "stopped", progress=False, on_trainer=stop_at_step(2))
    resumed = train(cfg, tmp_path / "stopped", progress=False).record
    assert resumed["resumes"] == 1 and resumed["splits"] == reference["splits"]


def test_class_aware_sampler_behaves_like_the_official_one():
    """data/ClassAwareSampler.py: a shuffled cycle of classes, 4 consecutive images per visit from
    each class's own shuffled cycle; N draws an epoch; the cycles carry over between epochs."""
    import itertools

    from ltbench.data import SAMPLERS

    labels = np.repeat(np.arange(5), [40, 13, 6, 3, 1])
    sampler = SAMPLERS.get("class_aware")

    def epochs(n: int):
        orders = sampler(labels, 5, lambda e: torch.Generator().manual_seed(100 + e))
        return [o.tolist() for o in itertools.islice(orders, n)]

    first = epochs(3)
    assert first == epochs(3)  # a pure function of the epoch seeds
    assert all(len(o) == len(labels) for o in first)
    visits = [labels[first[0][i : i + 4]] for i in range(0, len(labels) - 3, 4)]
    assert all(len(set(v)) == 1 for v in visits)  # 4 consecutive images of one class
    assert sorted(v[0] for v in visits[:5]) == [0, 1, 2, 3, 4]  # every class once per pass
    assert sorted(v[0] for v in visits[5:10]) == [0, 1, 2, 3, 4]
    draws = [i for o in first for i in o]
    of_class_1 = [i for i in draws if labels[i] == 1]
    assert sorted(of_class_1[:13]) == list(np.flatnonzero(labels == 1))  # a class's images cycle, shuffled
    assert of_class_1[:13] != sorted(of_class_1[:13])
    counts = np.bincount(labels[draws], minlength=5)
    assert counts.max() - counts.min() <= 8  # balanced up to the cut of the last visit of an epoch
