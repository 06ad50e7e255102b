"""LDAM-DRW: the LDAM loss against hand-derived values and the official formula (before and after
re-weighting, both margins), the method's model and presets, paper-scale steps, whole runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_SYNTHETIC, long_tailed_info, take_step

from ltbench.config import resolve_config
from ltbench.data import Batch
from ltbench.losses import LDAMLoss, class_balanced_weights, ldam_margins
from ltbench.method import DataInfo, StepContext
from ltbench.methods.ldam_drw import LDAMDRW
from ltbench.models.heads import NormedLinear
from ltbench.optim import sam_rho
from ltbench.runner import train
from ltbench.trainer import TrainingInterrupted

COUNTS = [100, 40, 10, 3]
LOGITS = torch.tensor(
    [[1.5, -0.3, 0.2, 0.8], [-1.0, 2.0, 0.5, -0.5], [0.3, 0.1, -2.0, 1.2], [0.0, 0.4, 0.9, -0.7], [2.2, -1.1, 0.6, 0.3]]
)
TARGET = torch.tensor([0, 1, 2, 3, 3])

# Reference values: a transcription of the official LDAMLoss (kaidic/LDAM-DRW losses.py: m_list
# = n^(-1/4) rescaled to max_m, margin subtracted where the one-hot index is set, cross_entropy of
# s * output with the DRW weights of cifar_train.py: (1 - beta) / (1 - beta^n), normalised to sum
# to C), run in float32 on cos = z / s with z = 10 * LOGITS, s = 30; gradients with respect to z.
OFFICIAL = {
    ("before", 0.5): (
        21.698867797851562,
        [
            [-0.06395437568426132, 1.0654875950422138e-06, 0.0001581324468133971, 0.06379517167806625],
            [4.796930214157058e-11, -0.0001568079023854807, 0.00015681255899835378, 7.119275835520966e-09],
            [2.4678500267327763e-05, 3.3398719097021967e-06, -0.20000000298023224, 0.1999719887971878],
            [2.451376712997444e-05, 0.0013384063495323062, 0.19863708317279816, -0.20000000298023224],
            [0.19999997317790985, 9.317772171985538e-16, 2.2507036234742372e-08, -0.20000000298023224],
        ],
    ),
    ("after", 0.5): (
        32.407833099365234,
        [
            [-0.004007566720247269, 6.676653896420248e-08, 9.909037544275634e-06, 0.003997590392827988],
            [7.49225334550907e-12, -2.4491591830155812e-05, 2.449231942591723e-05, 1.1119490883615413e-09],
            [1.539489130664151e-05, 2.083472054437152e-06, -0.12476358562707901, 0.12474610656499863],
            [5.095592132420279e-05, 0.002782098948955536, 0.41290003061294556, -0.41573306918144226],
            [0.4157330393791199, 1.9368532775207057e-15, 4.6784595753024405e-08, -0.41573306918144226],
        ],
    ),
    ("after", 0.3): (
        26.860645294189453,
        [
            [-0.0004669496847782284, 7.779435762245157e-09, 1.1545705547177931e-06, 0.000465786928543821],
            [3.245593626754334e-13, -1.0612899359330186e-06, 1.0609903711156221e-06, 4.816888207748171e-11],
            [1.539489130664151e-05, 2.083472054437152e-06, -0.12476358562707901, 0.12474610656499863],
            [5.095592132420279e-05, 0.002782098948955536, 0.41290003061294556, -0.41573306918144226],
            [0.4157330393791199, 1.9368532775207057e-15, 4.6784595753024405e-08, -0.41573306918144226],
        ],
    ),
}


@pytest.mark.parametrize(("mode", "max_margin"), list(OFFICIAL), ids=lambda v: str(v))
def test_ldam_loss_value_and_gradient_equal_the_official_code(mode, max_margin):
    loss_fn = LDAMLoss(COUNTS, scale=30.0, max_margin=max_margin, drw_epoch=160)
    z = (10 * LOGITS).requires_grad_(True)
    loss = loss_fn(z, TARGET, epoch=160 if mode == "before" else 161)  # DRW when epoch > 160
    loss.backward()
    value, grad = OFFICIAL[(mode, max_margin)]
    assert loss.item() == pytest.approx(value, abs=1e-5)
    assert torch.allclose(z.grad, torch.tensor(grad), atol=1e-5)


def test_ldam_loss_by_hand():
    # two classes with equal counts: both margins are max_margin = 0.5, s = 10; z = (1, 0), y = 0:
    # L = -log(e^(1 - 5) / (e^(1 - 5) + e^0)) = log(1 + e^4)
    loss = LDAMLoss([5, 5], scale=10.0, max_margin=0.5)(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), epoch=1)
    assert loss.item() == pytest.approx(math.log(1 + math.e**4), rel=1e-6)
    # margins ~ n^(-1/4): counts 16 and 1 give 0.5 and 0.25 (= 0.5 * 16^(-1/4))
    assert torch.allclose(ldam_margins([1, 16], 0.5), torch.tensor([0.5, 0.25]))
    # DRW: the weighted mean sum_i w_yi l_i / sum_i w_yi, with the class-balanced weights
    counts = [100, 1]
    fn = LDAMLoss(counts, scale=1.0, max_margin=0.0, drw_epoch=0)
    z, y = torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    assert fn(z, y, epoch=1).item() == pytest.approx(math.log(2), rel=1e-6)  # equal l_i: any weights
    z = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    w = class_balanced_weights(counts)
    l0, l1 = math.log(1 + math.e**-2), math.log(2)
    expected = (w[0] * l0 + w[1] * l1) / (w[0] + w[1])
    assert fn(z, y, epoch=1).item() == pytest.approx(expected.item(), rel=1e-6)
    assert fn(z, y, epoch=0).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)  # not yet re-weighted


def test_drw_never_reweights_with_a_negative_epoch():
    fn = LDAMLoss(COUNTS, drw_epoch=-1)
    assert not fn.reweighting(10_000)


def tiny_info(num_classes=10, in_chans=3, image_size=32) -> DataInfo:
    counts = np.maximum(1, (500 * 0.6 ** np.arange(num_classes)).astype(int))
    return DataInfo(num_classes=num_classes, in_chans=in_chans, image_size=image_size, train_counts=counts)


def test_model_is_the_backbone_with_a_cosine_classifier_of_scale_30():
    cfg = resolve_config("ldam_drw", "synthetic_lt", "smoke")
    method = LDAMDRW(cfg, tiny_info())
    assert isinstance(method.net.fc, NormedLinear) and method.net.fc.scale == 30.0
    x = torch.randn(3, 3, 32, 32)
    method.eval()
    logits = method.predict(x)
    assert logits.shape == (3, 10) and logits.abs().max() <= 30.0 + 1e-4


def test_train_step_reweights_after_drw_epoch():
    cfg = resolve_config("ldam_drw", "synthetic_lt", "smoke", ["method.drw_epoch=3"])
    method = LDAMDRW(cfg, tiny_info())
    batch = Batch([torch.randn(4, 3, 32, 32)], torch.tensor([0, 1, 8, 9]), torch.arange(4))
    method.eval()  # same BatchNorm output for both calls
    logits = method.net(batch.x)
    for epoch, weight in ((3, None), (4, class_balanced_weights(tiny_info().train_counts))):
        expected = F.cross_entropy(
            logits - method.criterion.margins[batch.y][:, None] * F.one_hot(batch.y, 10), batch.y, weight=weight
        )
        got = method.train_step(batch, StepContext("train", epoch, 5, 0, 1))["loss"]
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_paper_presets_carry_the_official_hyperparameters():
    cifar = resolve_config("ldam_drw", "cifar100_lt", "paper")
    st = cifar.stages["train"]
    assert cifar.model.arch == "resnet32" and cifar.method.max_margin == 0.5 and cifar.method.drw_epoch == 160
    assert (st.epochs, st.batch_size, st.optim.lr, st.optim.weight_decay, st.optim.nesterov) == (
        200,
        128,
        0.1,
        2e-4,
        False,
    )
    assert (st.schedule.name, st.schedule.warmup_epochs, st.schedule.milestones, st.schedule.gamma) == (
        "step",
        5,
        [160, 180],
        0.01,
    )
    assert st.optim.sam_rho == 0.0
    sam = resolve_config("ldam_drw", "cifar10_lt", "paper_sam")
    assert sam.stages["train"].optim.sam_rho == 0.8 and sam_rho(sam.stages["train"].optim, 199) == 0.8
    for dataset, lr, wd in (("imagenet_lt", 0.2, 2e-4), ("inat2018", 0.1, 1e-4)):
        cfg = resolve_config("ldam_drw", dataset, "paper_sam")
        st = cfg.stages["train"]
        assert cfg.model.arch == "resnet50" and cfg.method.max_margin == 0.3 and cfg.method.drw_epoch == 60
        assert (st.epochs, st.batch_size, st.optim.lr, st.optim.weight_decay) == (90, 256, lr, wd)
        assert (st.schedule.name, st.schedule.per, st.schedule.warmup_epochs) == ("cosine", "epoch", 0)
        # Saddle-LongTail adjust_rho (1-based epoch e): e <= 5: 0.05, <= 60: 0.1, <= 75: 0.5, else 0.5
        rhos = [sam_rho(st.optim, e - 1) for e in (1, 5, 6, 60, 61, 75, 76, 90)]
        assert rhos == [0.05, 0.05, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5]


def test_cpu_preset_is_the_ce_cpu_recipe_with_drw():
    ce = resolve_config("ce", "fmnist_lt", "cpu")
    for preset, rho in (("cpu", 0.0), ("cpu_sam", 0.05)):
        cfg = resolve_config("ldam_drw", "fmnist_lt", preset)
        assert cfg.model == ce.model and cfg.method.drw_epoch == 24
        st = cfg.stages["train"]
        assert st.optim.sam_rho == rho
        st.optim.sam_rho = 0.0
        assert st == ce.stages["train"]


def test_paper_scale_resnet50_takes_a_sam_step():
    torch.manual_seed(0)
    cfg = resolve_config("ldam_drw", "synthetic_lt", "smoke", ["model.arch=resnet50", "method.max_margin=0.3"])
    method = LDAMDRW(cfg, long_tailed_info(1000, 64))
    assert sum(p.numel() for p in method.parameters()) == 25_557_032 - 1000  # ResNet-50, bias-free cosine head
    take_step(method, "train", Batch([torch.randn(2, 3, 64, 64)], torch.tensor([3, 999]), torch.arange(2)), 61, 90)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters())


def test_paper_scale_resnet32_takes_a_step():
    cfg = resolve_config("ldam_drw", "cifar100_lt", "paper")
    method = LDAMDRW(cfg, tiny_info(num_classes=100))
    batch = Batch([torch.randn(4, 3, 32, 32)], torch.tensor([0, 1, 50, 99]), torch.arange(4))
    method.train()
    method.train_step(batch, StepContext("train", 161, 200, 0, 1))["loss"].backward()
    assert (
        sum(p.numel() for p in method.parameters()) == 463_504 + 64 * 100
    )  # ResNet-32 without fc (464,154 - 650) + 64 x 100 head


@pytest.mark.slow
@pytest.mark.parametrize("sets", [[], ["stages.train.optim.sam_rho=0.5"]], ids=["plain", "sam"])
def test_smoke_run_is_deterministic_and_resumes_mid_epoch(tmp_path, sets):
    cfg = resolve_config("ldam_drw", "synthetic_lt", "smoke", [*SMALL_SYNTHETIC, *sets])
    reference = train(cfg, tmp_path / "reference", progress=False).record
    again = train(cfg, tmp_path / "again", progress=False).record
    assert again["splits"] == reference["splits"]
    from conftest import stop_at_step

    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "stopped", progress=False, on_trainer=stop_at_step(2))
    resumed = train(cfg, tmp_path / "stopped", progress=False).record
    assert resumed["resumes"] == 1 and resumed["splits"] == reference["splits"]
