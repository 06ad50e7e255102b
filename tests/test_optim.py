"""Schedules against the formulas of the official code and torch; parameter groups."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from ltbench.config import OptimConfig, ScheduleConfig
from ltbench.optim import effective_lr, make_schedule, param_groups


def test_onecycle_matches_torch():
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    spe, epochs = 20, 30
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=spe * epochs)
    ours = make_schedule(ScheduleConfig(name="onecycle"), 0.1, spe, epochs)
    for step in range(spe * epochs):
        assert ours(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        ref.step()


def test_step_schedule_is_ride_custom_lr():
    # RIDE / LDAM-DRW CustomLR: lr*(i+1)/5 for epoch index i < 5; x0.01 from 160; x0.0001 from 180
    cfg = ScheduleConfig(name="step", per="epoch", warmup_epochs=5, milestones=[160, 180], gamma=0.01)
    spe = 7
    lr = make_schedule(cfg, 0.1, spe, 200)
    for i in range(200):
        expected = 0.1 * (i + 1) / 5 if i < 5 else 0.1 * (0.01 if i >= 160 else 1) * (0.01 if i >= 180 else 1)
        for k in (0, spe - 1):  # constant within an epoch
            assert lr(i * spe + k) == pytest.approx(expected)


def test_cosine_per_step_is_mae_schedule():
    # MAE util/lr_sched.adjust_learning_rate with epoch = step / steps_per_epoch
    cfg = ScheduleConfig(name="cosine", per="step", warmup_epochs=4, min_lr=1e-6)
    spe, epochs, base = 10, 20, 1e-3
    lr = make_schedule(cfg, base, spe, epochs)
    for step in range(spe * epochs):
        e = step / spe
        if e < 4:
            expected = base * e / 4
        else:
            expected = 1e-6 + (base - 1e-6) * 0.5 * (1 + math.cos(math.pi * (e - 4) / (epochs - 4)))
        assert lr(step) == pytest.approx(expected, rel=1e-12)
    assert lr(0) == 0.0


def test_cosine_per_epoch_is_cosine_annealing():
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    lr = make_schedule(ScheduleConfig(name="cosine", per="epoch"), 0.01, 3, 5)
    for epoch in range(5):
        assert lr(epoch * 3 + 2) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        ref.step()


def test_param_groups_no_decay_and_layer_decay():
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    named = list(net.named_parameters())
    groups = param_groups(named, OptimConfig(weight_decay=0.05, no_decay_1d=True))
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert decayed == {id(net[0].weight), id(net[2].weight)}
    groups = param_groups(
        named,
        OptimConfig(weight_decay=0.05, layer_decay=0.5),
        layer_id=lambda name: int(name.split(".")[0]),
        num_layers=2,
    )
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(net[0].weight)] == 0.25 and scale[id(net[1].weight)] == 0.5 and scale[id(net[2].bias)] == 1.0
    net[0].weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in param_groups(net.named_parameters(), OptimConfig())) == len(named) - 1


def test_base_lr_scaling():
    assert effective_lr(OptimConfig(lr=1.5e-4, lr_ref_batch=256), 4096) == pytest.approx(2.4e-3)
    assert effective_lr(OptimConfig(lr=0.1), 4096) == 0.1


def test_timm_cosine_per_batch_equals_timms_scheduler_as_deit_lt_steps_it():
    """DeiT-LT (``main.py``): timm ``create_scheduler`` with the ``arguments.py`` defaults (cosine,
    warmup 5 epochs from lr 1e-6, min lr 1e-5, cooldown 10). ``engine.py`` steps it at
    ``epoch + batch / len(loader)`` whenever ``batch % accum == 0`` or ``batch == len(loader) - 1``,
    and the optimizer steps after batches accum - 1, 2 accum - 1, ... and the last one. 10 batches,
    accumulation 4: windows start at batches 0, 4, 8, and the last one is re-stepped at batch 9."""
    from types import SimpleNamespace

    from timm.scheduler import create_scheduler

    epochs, batches, accum, lr = 12, 10, 4, 2.5e-4
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=lr)
    args = SimpleNamespace(
        sched="cosine",
        epochs=epochs,
        lr_noise=None,
        lr_noise_pct=0.67,
        lr_noise_std=1.0,
        warmup_lr=1e-6,
        min_lr=1e-5,
        decay_epochs=30,
        warmup_epochs=5,
        cooldown_epochs=10,
        patience_epochs=10,
        decay_rate=0.1,
    )
    timm_schedule, _ = create_scheduler(args, opt)
    cfg = ScheduleConfig(name="timm_cosine", per="batch", warmup_epochs=5, warmup_from=1e-6 / lr, min_lr=1e-5)
    spe = math.ceil(batches / accum)
    ours = make_schedule(cfg, lr, spe, epochs, batches, accum)
    official = []  # the lr of each optimizer step
    for epoch in range(epochs):
        for b in range(batches):
            if b % accum == 0 or b == batches - 1:
                timm_schedule.step(epoch + b / batches)
            if (b + 1) % accum == 0 or b == batches - 1:
                official.append(opt.param_groups[0]["lr"])
    assert len(official) == spe * epochs
    assert [ours(step) for step in range(spe * epochs)] == pytest.approx(official, rel=1e-12, abs=1e-18)
    # by hand: warmup is linear from 1e-6; the cosine counts the warmup epochs (t / epochs, not
    # (t - warmup) / (epochs - warmup)), so at the end of warmup the lr is already below its peak
    assert ours(0) == pytest.approx(1e-6)
    assert ours(1) == pytest.approx(1e-6 + 0.4 * (lr - 1e-6) / 5)  # window at batch 4: epoch 0.4
    assert ours(2) == pytest.approx(1e-6 + 0.9 * (lr - 1e-6) / 5)  # last window, re-stepped at batch 9
    assert ours(15) == pytest.approx(1e-5 + (lr - 1e-5) * 0.5 * (1 + math.cos(math.pi * 5 / 12)))
    # per step instead: the fraction of optimizer steps, which differs when accum does not divide batches
    per_step = make_schedule(dataclasses.replace(cfg, per="step"), lr, spe, epochs, batches, accum)
    assert per_step(1) == pytest.approx(1e-6 + (1 / 3) * (lr - 1e-6) / 5)
