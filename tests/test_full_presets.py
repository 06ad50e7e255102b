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
from ltbench.optim import make_schedule
from ltbench.registry import METHODS, load_plugins

CANON = ["crt", "tau_norm", "lws", "bal_softmax", "focal", "cb", "paco"]
FULL_METHODS = ["ce", "la", "ldam_drw", "ride", "mdcs", "shike", "livt", "deit_lt", *CANON]
CNN = {"ce", "la", "ldam_drw", "ride", "mdcs", "shike", *CANON}


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


def stand_in(name: str, cfg, info: DataInfo) -> nn.Module:
    """A required run, untrained: the decoupled rows' `ce` representation built from the config they
    require, the fixed :class:`StandInTeacher` for a distillation teacher."""
    if name == "representation":
        return METHODS.get(cfg.method_name)(cfg, info).eval().requires_grad_(False)
    return StandInTeacher(info.num_classes, info.in_chans)


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
    required = cls.requires(cfg)
    net = cls(cfg, info, {n: stand_in(n, c, info) for n, c in required.items()}) if required else cls(cfg, info)
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
    steps = (s.milestones, s.gamma) if s.name in ("step", "paco_step") else ()
    return (s.name, s.per, s.warmup_epochs, s.warmup_from, s.min_lr, *steps)


@pytest.mark.parametrize("baseline", ["ce", "la"])
@pytest.mark.parametrize(
    ("method", "stage_name", "row"),
    [
        ("ride", "train", "full_ride"),
        ("mdcs", "train", "full_mdcs"),
        ("livt", "bft", "full_livt"),
        ("deit_lt", "train", "full_deit_lt"),
        ("bal_softmax", "train", "full_bal_softmax"),
        ("paco", "train", "full_paco"),
        # the official CIFAR schedule of focal and cb is LDAM-DRW's: their CE row is `full`
        ("focal", "train", "full"),
        ("cb", "train", "full"),
    ],
)
def test_each_full_row_has_a_baseline_row_of_its_schedule(baseline, method, stage_name, row):
    load_plugins()
    theirs, ours = stage(method, "full", stage_name), stage(baseline, row)
    assert (ours.epochs, ours.batch_size, ours.accum_steps) == (theirs.epochs, theirs.batch_size, theirs.accum_steps)
    assert ours.augment[0] == theirs.augment[0] and ours.drop_last == theirs.drop_last
    assert schedule(ours) == schedule(theirs)
    assert (ours.optim.name, effective_lr(ours), ours.optim.weight_decay) == pytest.approx(
        (theirs.optim.name, effective_lr(theirs), theirs.optim.weight_decay)
    )
    if theirs.optim.name == "sgd":
        assert (ours.optim.momentum, ours.optim.nesterov) == (theirs.optim.momentum, theirs.optim.nesterov)
    full, base = resolve_config(method, "fmnist_lt", "full"), resolve_config(baseline, "fmnist_lt", row)
    kind = full.model.arch
    assert base.model.arch == ("vit" if "vit" in kind or "deit" in kind else "resnet32")
    assert (base.data, base.train.precision) == (full.data, full.train.precision)


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


def sgd_of(scfg) -> tuple:
    o = scfg.optim
    return (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay)


def test_decoupled_full_rows_share_one_ce_full_representation():
    # crt, tau_norm and lws start from `ce --preset full` (one run per seed, trained once) with the
    # classifier stages of cls_crt.yaml / cls_lws.yaml: batch 512, class-aware, SGD 0.2, wd 5e-4, cosine to 0
    load_plugins()
    ce = resolve_config("ce", "fmnist_lt", "full", seed=1)
    for name in ("crt", "tau_norm", "lws"):
        cfg = resolve_config(name, "fmnist_lt", "full", seed=1)
        assert METHODS.get(name).requires(cfg)["representation"].run_id() == ce.run_id()
        assert cfg.model == ce.model
    for name, epochs in (("crt", 10), ("lws", 5)):
        s = stage(name, "full", name)
        assert (s.epochs, s.batch_size, s.sampler, s.augment) == (epochs, 512, "class_aware", ["pad_crop_flip"])
        assert sgd_of(s) == ("sgd", 0.2, 0.9, False, 5e-4)
        assert (s.schedule.name, s.schedule.per, s.schedule.warmup_epochs, s.schedule.min_lr) == (
            "cosine",
            "epoch",
            0,
            0.0,
        )
    assert resolve_config("tau_norm", "fmnist_lt", "full").stages == {}


def test_focal_and_cb_full_presets_are_the_class_balanced_loss_cifar_runs():
    # class-balanced-loss src/cifar_main.py defaults with cifar_im_trainval*.sh: ResNet-32, 200 epochs of
    # batch 128, MomentumOptimizer 0.9, wd 2e-4, lr 0.1 after 5 warmup epochs, x0.01 from 160, x0.0001 from
    # 180 (--learning-rate-multiplier 1 0.01 0.0001); focal gamma 1.0; CB beta 0.9999 on the focal loss
    load_plugins()
    for name in ("focal", "cb"):
        cfg = resolve_config(name, "fmnist_lt", "full")
        s = cfg.stages["train"]
        assert (cfg.model.arch, s.epochs, s.batch_size, s.augment) == ("resnet32", 200, 128, ["pad_crop_flip"])
        assert sgd_of(s) == ("sgd", 0.1, 0.9, False, 2e-4)
        assert (s.schedule.name, s.schedule.per, s.schedule.warmup_epochs) == ("step", "epoch", 5)
        lr = make_schedule(s.schedule, s.optim.lr, 1, s.epochs)  # after the warmup (its form differs, see cb.py)
        assert [lr(e) for e in range(5, 200)] == pytest.approx(
            [0.1 if e < 160 else 1e-3 if e < 180 else 1e-5 for e in range(5, 200)]
        )
        assert cfg.method.gamma == 1.0
    cb = resolve_config("cb", "fmnist_lt", "full").method
    assert (cb.beta, cb.loss_type) == (0.9999, "focal")
    assert resolve_config("focal", "fmnist_lt", "full").method.alpha < 0  # Eq. 4, no alpha


def test_bal_softmax_full_preset_is_the_cifar100_recipe_on_fmnist_lts_own_data():
    # balanced_softmax_imba200.yaml on CIFAR-100-LT (9,502 images, 19 loader batches of 512): epochs
    # ceil(13000 / 19) = 685, warmup ceil(800 / 19) = 43 from base_lr 0.05 to warmup_lr 0.1, cosine to
    # endlr 0; SGD momentum 0.9, wd 5e-4; int(N / 512) steps an epoch; AutoAugment + Cutout
    load_plugins()
    cfg = resolve_config("bal_softmax", "fmnist_lt", "full")
    s = cfg.stages["train"]
    assert (cfg.model.arch, s.epochs, s.batch_size, s.drop_last, s.augment) == (
        "resnet32",
        685,
        512,
        True,
        ["autoaug_cutout"],
    )
    assert sgd_of(s) == ("sgd", 0.1, 0.9, False, 5e-4)
    assert (s.schedule.name, s.schedule.per, s.schedule.warmup_epochs, s.schedule.min_lr) == ("cosine", "epoch", 43, 0)
    assert s.schedule.warmup_from * s.optim.lr == pytest.approx(0.05)
    # the official CIFAR data's IF 200 stays in the paper preset: fmnist_lt keeps its IF 100
    assert resolve_config("bal_softmax", "cifar100_lt", "paper").data.imb_factor == 200
    assert cfg.data.imb_factor == 100 and cfg.data == resolve_config("ce", "fmnist_lt", "full").data


def test_paco_full_preset_is_the_official_cifar100_script():
    # sh/CIFAR100_train_imb0.01.sh with paco_cifar.py's defaults: ResNet-32, 400 epochs, batch 128
    # (drop_last), SGD 0.05 momentum 0.9 wd 5e-4, --aug cifar100 (AutoAugment + Cutout queries, SimCLR
    # keys), moco dim 32, K 1024, m 0.999, T 0.05, alpha 0.01, beta 1, gamma 1
    load_plugins()
    cfg = resolve_config("paco", "fmnist_lt", "full")
    s = cfg.stages["train"]
    assert (cfg.model.arch, s.epochs, s.batch_size, s.drop_last) == ("resnet32", 400, 128, True)
    assert s.augment == ["autoaug_cutout", "simclr_cifar"]
    assert sgd_of(s) == ("sgd", 0.05, 0.9, False, 5e-4)
    hp = cfg.method
    assert (hp.moco_dim, hp.queue_size, hp.momentum, hp.temperature) == (32, 1024, 0.999, 0.05)
    assert (hp.alpha, hp.beta, hp.gamma, hp.mlp) == (0.01, 1.0, 1.0, True)
    # paco_cifar.py adjust_learning_rate, per 0-based epoch, for paco's row and its CE row alike
    official = [
        0.05 * (e + 1) / 10 if e <= 10 else 0.05 * (0.01 if e > 360 else 0.1 if e > 320 else 1) for e in range(400)
    ]
    for scfg in (s, stage("ce", "full_paco")):
        lr = make_schedule(scfg.schedule, scfg.optim.lr, 1, scfg.epochs)
        assert [lr(e) for e in range(400)] == pytest.approx(official)


def test_every_full_row_is_a_ce_and_la_preset():
    """The rows are listed literally (``ltbench list`` reads preset names without importing torch):
    a row added to FULL_ROWS must also be named in both presets tables."""
    load_plugins()
    from ltbench.methods.ce import FULL_ROWS

    for method in ("ce", "la"):
        assert set(FULL_ROWS) <= set(METHODS.get(method).presets), method
