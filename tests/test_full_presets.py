"""The `full` presets: every method on fmnist_lt at its official CIFAR-100-LT schedule, each with a
CE row of its own backbone and schedule (the full board, for a GPU). Tiny shapes only: each preset
resolves, its recipes run, and every stage takes one training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import take_step
from torch import nn

from ltbench.augment import build_recipes
from ltbench.config import resolve_config
from ltbench.data import Batch, LTData, TensorSplit, exponential_profile
from ltbench.method import DataInfo
from ltbench.registry import METHODS, load_plugins

FULL_METHODS = ["ce", "la", "ldam_drw", "ride", "mdcs", "shike", "livt", "deit_lt"]
CNN = {"ce", "la", "ldam_drw", "ride", "mdcs", "shike"}


def fmnist_like(n_test: int = 8) -> LTData:
    """fmnist_lt's shapes and statistics (10 classes, 1 x 28 x 28 uint8) on random pixels."""
    gen = torch.Generator().manual_seed(0)
    counts = exponential_profile(40, 10, 10)
    labels = np.repeat(np.arange(10), counts)
    images = torch.randint(0, 256, (len(labels), 1, 28, 28), dtype=torch.uint8, generator=gen)
    test = TensorSplit(images[:n_test], labels[:n_test])
    return LTData("fmnist_lt", 10, 1, 28, (0.2860,), (0.3530,), TensorSplit(images, labels), None, test, "x")


class StandInTeacher(nn.Module):
    """A fixed linear classifier on 4x4-pooled pixels in place of the ``ldam_drw`` teacher run."""

    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, in_chans * 16), requires_grad=False)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ self.weight.t()


def views_of(names: list[str], data: LTData, index: torch.Tensor) -> list[torch.Tensor]:
    """The stage's recipes on a batch, as the trainer runs them (batch form, else per image)."""
    gen = torch.Generator().manual_seed(1)
    images = data.train.images[index]
    out = []
    for recipe in build_recipes(names, data):
        out.append(recipe.batch(images, gen) if recipe.batch else torch.stack([recipe.sample(im) for im in images]))
    return out


@pytest.mark.parametrize("method", FULL_METHODS)
def test_full_preset_resolves_and_every_stage_takes_a_step(method):
    load_plugins()
    cfg = resolve_config(method, "fmnist_lt", "full")
    assert cfg.model.arch.startswith("resnet32") if method in CNN else cfg.model.embed_dim == 128
    data = fmnist_like()
    info = DataInfo.of(data)
    torch.manual_seed(0)
    cls = METHODS.get(method)
    net = cls(cfg, info, {"teacher": StandInTeacher(10, 1)}) if cls.requires(cfg) else cls(cfg, info)
    index = torch.arange(0, len(data.train), len(data.train) // 8)[:8]
    for stage, scfg in cfg.stages.items():
        if scfg.epochs == 0:
            continue
        batch = Batch(views_of(scfg.augment, data, index), torch.from_numpy(data.train.labels[index]), index)
        assert all(v.shape == (8, 1, 28, 28) for v in batch.views)
        net.train()
        take_step(net, stage, batch, scfg.epochs, scfg.epochs)  # the last epoch: DRW and re-weighting on
    net.eval()
    with torch.no_grad():
        assert net.predict(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def stage(method: str, preset: str, name: str = "train"):
    return resolve_config(method, "fmnist_lt", preset).stages[name]


def effective_lr(scfg) -> float:
    ref = getattr(scfg.optim, "lr_ref_batch", 0) or 0
    return scfg.optim.lr * scfg.batch_size * scfg.accum_steps / ref if ref else scfg.optim.lr


def schedule(scfg) -> tuple:
    """The schedule's fields that matter for its kind (a cosine ignores step milestones)."""
    s = scfg.schedule
    steps = (s.milestones, s.gamma) if s.name == "step" else ()
    return (s.name, s.per, s.warmup_epochs, s.warmup_from, s.min_lr, *steps)


@pytest.mark.parametrize("baseline", ["ce", "la"])
@pytest.mark.parametrize(
    ("method", "stage_name"), [("ride", "train"), ("mdcs", "train"), ("livt", "bft"), ("deit_lt", "train")]
)
def test_each_full_row_has_a_baseline_row_of_its_schedule(baseline, method, stage_name):
    load_plugins()
    theirs, ours = stage(method, "full", stage_name), stage(baseline, f"full_{method}")
    assert (ours.epochs, ours.batch_size, ours.accum_steps) == (theirs.epochs, theirs.batch_size, theirs.accum_steps)
    assert ours.augment[0] == theirs.augment[0] and ours.drop_last == theirs.drop_last
    assert schedule(ours) == schedule(theirs)
    assert (ours.optim.name, effective_lr(ours), ours.optim.weight_decay) == pytest.approx(
        (theirs.optim.name, effective_lr(theirs), theirs.optim.weight_decay)
    )
    if theirs.optim.name == "sgd":
        assert (ours.optim.momentum, ours.optim.nesterov) == (theirs.optim.momentum, theirs.optim.nesterov)
    kind = resolve_config(method, "fmnist_lt", "full").model.arch
    assert resolve_config(baseline, "fmnist_lt", f"full_{method}").model.arch == (
        "vit" if "vit" in kind or "deit" in kind else "resnet32"
    )


def test_shike_baseline_row_spans_both_stages_with_stage_ones_optimiser():
    load_plugins()
    train, retrain, ours = stage("shike", "full"), stage("shike", "full", "retrain"), stage("ce", "full_shike")
    assert ours.epochs == train.epochs + retrain.epochs == 200  # cifarTrain.py: 180 + 20
    assert (ours.optim, schedule(ours), ours.augment) == (train.optim, schedule(train), train.augment)


def test_full_presets_carry_the_official_cifar_budgets():
    # epochs, batch and lr steps of each official CIFAR-100-LT config (see the method modules' notes)
    load_plugins()
    assert (stage("ldam_drw", "full").epochs, resolve_config("ldam_drw", "fmnist_lt", "full").method.drw_epoch) == (
        200,
        160,
    )
    ride = stage("ride", "full")
    assert (ride.epochs, ride.batch_size, ride.schedule.milestones) == (200, 128, [160, 180])
    mdcs = stage("mdcs", "full")
    assert (mdcs.epochs, mdcs.batch_size, mdcs.schedule.milestones, mdcs.schedule.warmup_epochs) == (
        400,
        64,
        [200, 320, 380],
        20,
    )
    assert (stage("shike", "full").epochs, stage("shike", "full", "retrain").epochs) == (180, 20)
    assert (stage("livt", "full", "mgp").epochs, stage("livt", "full", "bft").epochs) == (800, 100)
    deit = resolve_config("deit_lt", "fmnist_lt", "full")
    assert (deit.stages["train"].epochs, deit.method.drw_epoch, deit.method.teacher_preset) == (1200, 1100, "full_sam")
    teacher = resolve_config("ldam_drw", "fmnist_lt", "full_sam").stages["train"].optim.sam_rho
    assert teacher == 0.8  # Saddle-LongTail run.sh, CIFAR
