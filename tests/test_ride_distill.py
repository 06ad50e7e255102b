"""RIDE's distilled students: the RIDELossWithDistill term against the official formula and by
hand, the teacher a student requires, the distill presets, a smoke run through the runner."""

from __future__ import annotations

import math

import pytest
import torch

from ltbench.config import resolve_config
from ltbench.errors import ConfigError
from ltbench.method import DataInfo
from ltbench.methods.ride import RIDE, RIDEDistillLoss, RIDELoss
from ltbench.runner import train

COUNTS = [100, 40, 10, 3]
# inputs of the reference run: student expert logits [B=4, E=3, C=4] and teacher logits [4, 4]
X = [
    [[-5.63, -5.76, -1.25, -2.17], [4.24, 3.46, -1.58, -10.58], [1.61, -6.32, 1.75, 1.54]],
    [[0.6, 6.19, 5.58, -1.24], [-6.76, -8.48, 2.83, 3.97], [2.99, -7.78, -1.71, 9.27]],
    [[3.75, -2.93, -0.87, 0.92], [6.95, 7.93, 4.73, -4.22], [-3.07, 0.16, -2.46, 1.24]],
    [[2.2, 0.56, 3.2, 2.21], [-0.51, 3.96, -1.45, 0.26], [2.61, 11.51, -7.34, -7.93]],
]
TEACHER = [
    [-3.37, 4.36, 5.28, 0.89],
    [-1.15, -1.96, 2.72, -1.98],
    [-2.23, 3.72, 7.6, 17.05],
    [-7.66, -6.17, 9.1, -2.76],
]
TARGET = torch.tensor([0, 1, 2, 3])

# Reference values: a CPU transcription of the official RIDELoss and RIDELossWithDistill
# (model/loss.py @ ab8be5c; CIFAR distill config: additional_diversity_factor -0.45, reweight_epoch
# 160, reweight_factor 0.05, distill_temperature 1.5, s = 30, max_m 0.5), including its loop that
# adds the whole RIDE loss and the distillation term once per expert; float32, gradients with
# respect to the student's expert logits, at 1-based epochs 160 (before re-weighting) and 161.
OFFICIAL = {
    160: (
        152.91600036621094,
        [
            [
                [-0.3672857880592346, -0.08681619167327881, 0.3298429548740387, 0.12425901740789413],
                [-0.5921251773834229, 0.5461220741271973, 0.039208315312862396, 0.006794787012040615],
                [-0.47309690713882446, -0.0899679884314537, 0.3229421079158783, 0.24012279510498047],
            ],
            [
                [-0.008757242001593113, -0.9795242547988892, 0.43728357553482056, 0.5509979724884033],
                [-0.013047078624367714, -0.7619903087615967, -0.08781670033931732, 0.86285400390625],
                [-0.012282597832381725, -0.7619893550872803, -0.18776538968086243, 0.9620373249053955],
            ],
            [
                [0.7952967882156372, 0.20422084629535675, -0.6791070699691772, -0.3204105496406555],
                [0.5185322165489197, 0.5107232332229614, -0.6857143640518188, -0.3435409665107727],
                [0.40746936202049255, 0.30878162384033203, -0.6820559501647949, -0.03419506549835205],
            ],
            [
                [0.15512888133525848, 0.6981589794158936, -0.037051618099212646, -0.8162362575531006],
                [0.036727629601955414, 1.0882012844085693, -0.3699288070201874, -0.7550001740455627],
                [0.03204550966620445, 1.0867160558700562, -0.37177976965904236, -0.7469818592071533],
            ],
        ],
    ),
    161: (
        197.53260803222656,
        [
            [
                [0.2947982847690582, -0.09390057623386383, -0.16277356445789337, -0.059818342328071594],
                [0.11792148649692535, -0.14565807580947876, 0.02806244045495987, 0.005088884849101305],
                [0.21696418523788452, -0.0925549641251564, -0.06577777862548828, -0.0710928738117218],
            ],
            [
                [-0.0132328812032938, -0.3595704138278961, -0.16900634765625, 0.5520991086959839],
                [-0.01392674446105957, -0.17248772084712982, -0.22846849262714386, 0.4150462746620178],
                [-0.013784343376755714, -0.17248742282390594, -0.19908012449741364, 0.3848811089992523],
            ],
            [
                [0.7015955448150635, 0.20546981692314148, -0.5699098110198975, -0.32941722869873047],
                [0.49364030361175537, 0.41969287395477295, -0.577447772026062, -0.3447906970977783],
                [0.36967790126800537, 0.2968757748603821, -0.5710591077804565, -0.11961305141448975],
            ],
            [
                [0.5308138132095337, 0.7474156022071838, 0.913118839263916, -2.1992006301879883],
                [0.05082487687468529, 2.4498398303985596, -0.36336976289749146, -2.1377153396606445],
                [0.029402954503893852, 2.473963737487793, -0.37190040946006775, -2.1317479610443115],
            ],
        ],
    ),
}


def distill_loss(**kw) -> RIDEDistillLoss:
    ride = RIDELoss(
        COUNTS, scale=30.0, max_margin=0.5, diversity_factor=-0.45, reweight_epoch=160, reweight_factor=0.05
    )
    return RIDEDistillLoss(ride, **kw)


@pytest.mark.parametrize("epoch", list(OFFICIAL))
def test_value_and_gradient_equal_the_official_code(epoch):
    x = torch.tensor(X).requires_grad_(True)
    out = distill_loss(temperature=1.5)(x, TARGET, epoch, torch.tensor(TEACHER))
    out["loss"].backward()
    value, grad = OFFICIAL[epoch]
    assert out["loss"].item() == pytest.approx(value, abs=2e-5)  # one float32 ulp at ~200 is 1.5e-5
    assert torch.allclose(x.grad, torch.tensor(grad), atol=1e-5)
    assert out["loss"].item() == pytest.approx((out["ride"] + out["distill"]).item(), rel=1e-6)


def test_distillation_term_by_hand():
    # two classes, E = 2 experts with zero logits (zbar = 0), teacher logits (T log 3, 0): the
    # teacher's softmax at T is (3/4, 1/4), the student's (1/2, 1/2), so
    # distill = E * gamma * T^2 * [3/4 log(3/2) + 1/4 log(1/2)]
    t = 1.5
    fn = RIDEDistillLoss(
        RIDELoss([10, 10], diversity_factor=0.0, reweight_epoch=100), temperature=t, distill_factor=0.5
    )
    out = fn(torch.zeros(1, 2, 2), torch.tensor([0]), 1, torch.tensor([[t * math.log(3), 0.0]]))
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert out["distill"].item() == pytest.approx(2 * 0.5 * t * t * kl, rel=1e-6)
    # the RIDE part is E times the RIDE loss: with zero logits and lambda = 0 each expert's term is
    # CE((0 - 30 m, 0), 0) with m = 0.5 (equal counts): log(1 + e^15)
    assert out["ride"].item() == pytest.approx(2 * 2 * math.log(1 + math.exp(15)), rel=1e-6)
    # a teacher equal to the student's ensemble leaves only the RIDE part
    same = fn(torch.zeros(1, 2, 2), torch.tensor([0]), 1, torch.zeros(1, 2))
    assert same["distill"].item() == pytest.approx(0.0, abs=1e-7)


def test_the_student_requires_a_larger_ride_teacher_shared_across_seeds():
    assert RIDE.requires(resolve_config("ride", "synthetic_lt", "smoke")) == {}
    s0 = resolve_config("ride", "synthetic_lt", "smoke", ["method.distill=true", "data.img_max=40"], seed=0)
    s1 = resolve_config("ride", "synthetic_lt", "smoke", ["method.distill=true", "data.img_max=40"], seed=1)
    t0, t1 = RIDE.requires(s0)["teacher"], RIDE.requires(s1)["teacher"]
    assert t0.run_id() == t1.run_id()
    assert t0.method.num_experts == 6 and not t0.method.distill and t0.stages["router"].epochs == 0
    assert t0.data == s0.data and t0.model.arch == s0.model.arch and t0.seed == 0 and t0.preset == "smoke"


def test_distill_presets_follow_the_official_distill_configs():
    student = resolve_config("ride", "cifar100_lt", "paper_distill")
    assert student.method.distill and student.method.distill_temperature == 1.5 and student.method.num_experts == 3
    assert student.stages["train"].schedule.warmup_epochs == 20  # config_imbalance_cifar100_distill_ride.json
    assert student.stages["router"].epochs == 5  # the distilled students are reported with expert assignment
    teacher = RIDE.requires(student)["teacher"]
    assert teacher.preset == "paper" and teacher.method.num_experts == 6
    assert teacher.stages["train"].schedule.warmup_epochs == 5 and teacher.stages["router"].epochs == 0
    for preset, dataset, teacher_preset in (
        ("paper_distill", "imagenet_lt", "paper"),
        ("paper_distill", "inat2018", "paper"),
        ("paper_distill_r50", "imagenet_lt", "paper_r50"),
        ("paper_distill_r10", "imagenet_lt", "paper_r10"),
        ("cpu_distill", "fmnist_lt", "cpu"),
    ):
        student = resolve_config("ride", dataset, preset)
        plain = resolve_config("ride", dataset, teacher_preset)
        assert student.stages == plain.stages  # only the loss changes (and the teacher)
        assert RIDE.requires(student)["teacher"].preset == teacher_preset


def test_a_distilled_student_without_its_teacher_is_refused():
    cfg = resolve_config("ride", "synthetic_lt", "smoke", ["method.distill=true"])
    info = DataInfo(num_classes=10, in_chans=3, image_size=16, train_counts=torch.arange(10, 0, -1).numpy())
    with pytest.raises(ConfigError, match="needs the teacher run"):
        RIDE(cfg, info)


@pytest.mark.slow
def test_smoke_run_of_a_distilled_student(tmp_path):
    sets = ["method.distill=true", "method.teacher_experts=4", "data.img_max=40", "data.test_per_class=6"]
    cfg = resolve_config("ride", "synthetic_lt", "smoke", sets)
    res = train(cfg, tmp_path, progress=False)
    teacher = RIDE.requires(cfg)["teacher"]
    assert res.record["teachers"]["teacher"]["run_id"] == teacher.run_id()
    terms = [e["train_terms"] for e in res.run.read_metrics() if e.get("stage") == "train" and not e.get("final")]
    assert set(terms[0]) == {"loss", "ride", "distill"}
    saved = torch.load(res.run.checkpoint, weights_only=False)["model"]
    assert not any("teacher" in k for k in saved)
    assert sum(1 for k in saved if k.startswith("net.heads.")) == 3  # the student's 3 experts only
