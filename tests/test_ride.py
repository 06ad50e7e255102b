"""RIDE: the loss and the router against the official code and by hand, the router stage,
test-time routing and its counters, schedules, the balanced sampler, presets and whole runs.

Reference values marked "official" were obtained by running frank-xwang/RIDE-LongTailRecognition
@ ab8be5c on the CPU (float32): ``model/loss.py::RIDELoss`` (its one ``.cuda()`` removed) after
``_hook_before_epoch(epoch)``, called as the trainer does with ``output_logits`` = the mean of the
expert logits and ``extra_info={"logits": [...]}``; and ``ea_resnet_cifar.ResNet_s`` (3 experts,
``layer3_output_dim=4``, ``top_choices_num=3``, ``pos_weight=100``) with conv1/bn1/layer1 replaced
by identities and ``_separate_part`` returning the fixed logits and feature maps generated below,
in train mode (``forward(x, target)``, loss and router gradients) and in eval mode (routing).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import SMALL_SYNTHETIC, final_results, long_tailed_info, resolve_registered, stop_at_step, take_step
from torch import nn

from ltbench.config import Config, StageConfig, apply_overlay, resolve_config
from ltbench.data import SAMPLERS, Batch
from ltbench.errors import ConfigError
from ltbench.filelists import FileListParams
from ltbench.method import DataInfo, StepContext
from ltbench.methods.ride import (
    RIDE,
    ExpertRouter,
    RIDELoss,
    RIDEParams,
    RouterLoss,
    diversity_temperatures,
    routing_targets,
)
from ltbench.models.compute import count_macs
from ltbench.models.multi_expert import ExpertOutputs
from ltbench.optim import make_schedule
from ltbench.runner import train
from ltbench.trainer import TrainingInterrupted

# ----------------------------------------------------------------------------- the RIDE loss

COUNTS = [500, 120, 40, 12, 3]


def loss_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(20210101)
    return torch.randn(4, 3, 5, generator=g) * 8, torch.tensor([0, 2, 4, 1])


# (lambda, reweight_factor, epoch) with reweight_epoch = 2: official loss value and d loss / d logits
OFFICIAL_LOSS = {
    "cifar_before": (
        (-0.45, 0.05, 2),
        51.973843,
        [
            -0.24999999,
            0.00097446673,
            0.24902487,
            3.3285438e-08,
            6.2132295e-07,
            -0.25668913,
            0.13484414,
            0.12165639,
            0.00018858806,
            1.3999923e-08,
            -0.24999999,
            0.018919744,
            0.23108023,
            3.3103262e-09,
            3.8731596e-10,
            0.24916324,
            0.0004844607,
            -0.249972,
            7.5887569e-06,
            0.00031668323,
            0.2494529,
            0.00045533973,
            -0.24991761,
            7.6667338e-06,
            1.7044922e-06,
            0.11197242,
            0.00051130028,
            -0.25003752,
            0.1375502,
            3.5805783e-06,
            0.13026389,
            0.11246562,
            0.0069794571,
            8.656204e-06,
            -0.24971764,
            2.7489852e-05,
            0.23399425,
            0.032593198,
            7.5259886e-06,
            -0.26662248,
            2.730794e-05,
            0.26290441,
            0.0013154388,
            5.6019708e-05,
            -0.26430318,
            0.0051049585,
            -0.33153486,
            0.0034906557,
            0.034589875,
            0.28834936,
            0.00080116495,
            -0.24509938,
            1.0581438e-06,
            0.0047458895,
            0.23955126,
            0.0010087204,
            -0.26126057,
            5.9824586e-05,
            0.15761125,
            0.10258076,
        ],
    ),
    "cifar_after": (
        (-0.45, 0.05, 3),
        63.593575,
        [
            -0.005558691,
            0.00029381501,
            0.0052558864,
            -2.1468149e-10,
            -3.3862257e-08,
            -0.010792751,
            -0.083845243,
            0.098327316,
            -3.1263633e-05,
            1.0487175e-10,
            -0.005558691,
            -0.0044407551,
            0.010158101,
            1.3409808e-10,
            1.0156068e-11,
            0.067675911,
            0.00042233881,
            -0.067904122,
            3.6012329e-06,
            -0.00020437708,
            0.067481235,
            0.00042596334,
            -0.06784907,
            3.5925043e-06,
            5.9912094e-07,
            0.086871691,
            0.00045002837,
            -0.067879349,
            -0.035911106,
            1.3581921e-06,
            0.77925164,
            0.10737771,
            0.027630147,
            9.4616098e-06,
            -0.90367919,
            8.2725792e-06,
            0.75706583,
            0.16471054,
            2.4327446e-06,
            -0.92317992,
            7.2242537e-06,
            0.91597682,
            0.00072603609,
            0.00028157697,
            -0.91757137,
            0.00052723818,
            -0.097119413,
            0.00017929885,
            0.0031718982,
            0.096623912,
            0.0001897373,
            -0.02059656,
            1.2000585e-07,
            0.002504519,
            0.017759806,
            0.00019091037,
            -0.029209882,
            5.8870319e-07,
            -0.069588885,
            0.099195458,
        ],
    ),
    "imagenet_after": (
        (-0.2, 0.02, 3),
        64.768585,
        [
            -0.0055586901,
            0.00027219599,
            0.0052832989,
            -2.0611173e-09,
            -7.1404067e-08,
            -0.0083025824,
            -0.036503453,
            0.045526724,
            -3.0008421e-05,
            -7.3880585e-10,
            -0.0055586901,
            -0.0035316437,
            0.0091415085,
            4.1962692e-10,
            4.1508977e-11,
            0.067674197,
            0.00020105,
            -0.067902334,
            2.5163047e-06,
            2.6014735e-05,
            0.067691468,
            0.00019622351,
            -0.06787812,
            2.5296663e-06,
            5.0331994e-07,
            0.044786643,
            0.00021403212,
            -0.067909218,
            0.019606873,
            1.1423031e-06,
            0.81436163,
            0.056807917,
            0.034859929,
            9.8040919e-06,
            -0.90371323,
            8.2145434e-06,
            0.73625338,
            0.1750503,
            2.608595e-06,
            -0.91154498,
            7.1738177e-06,
            0.9091391,
            0.00045973112,
            0.00028233387,
            -0.90999091,
            0.00052645453,
            -0.058256865,
            0.00023040117,
            0.0034151082,
            0.054709975,
            0.00020180792,
            -0.021142207,
            2.0161056e-07,
            0.0016479724,
            0.019246886,
            0.00020019907,
            -0.026824091,
            -2.4250585e-07,
            -0.018142536,
            0.044882067,
        ],
    ),
    "collaborative_after": (
        (0.0, 0.05, 3),
        60.925861,
        [
            -0.0055586919,
            4.8146689e-05,
            0.0055105449,
            1.6356512e-10,
            1.9137471e-11,
            -0.0055586919,
            4.8146689e-05,
            0.0055105449,
            1.6356512e-10,
            1.9137471e-11,
            -0.0055586919,
            4.8146689e-05,
            0.0055105449,
            1.6356512e-10,
            1.9137471e-11,
            0.067634113,
            0.00027095678,
            -0.067910686,
            4.584309e-06,
            1.0296704e-06,
            0.067634113,
            0.00027095678,
            -0.067910686,
            4.584309e-06,
            1.0296704e-06,
            0.067634113,
            0.00027095678,
            -0.067910686,
            4.584309e-06,
            1.0296704e-06,
            0.00021980004,
            0.89293146,
            0.010592301,
            5.9465179e-05,
            -0.90380311,
            0.00021980004,
            0.89293146,
            0.010592301,
            5.9465179e-05,
            -0.90380311,
            0.00021980004,
            0.89293146,
            0.010592301,
            5.9465179e-05,
            -0.90380311,
            0.00016776328,
            -0.022724858,
            2.2347869e-07,
            0.0010022642,
            0.021554606,
            0.00016776328,
            -0.022724858,
            2.2347869e-07,
            0.0010022642,
            0.021554606,
            0.00016776328,
            -0.022724858,
            2.2347869e-07,
            0.0010022642,
            0.021554606,
        ],
    ),
}


@pytest.mark.parametrize("mode", list(OFFICIAL_LOSS))
def test_ride_loss_value_and_gradient_equal_the_official_code(mode):
    (lam, alpha, epoch), value, grad = OFFICIAL_LOSS[mode]
    criterion = RIDELoss(COUNTS, diversity_factor=lam, reweight_epoch=2, reweight_factor=alpha)
    logits, target = loss_inputs()
    logits.requires_grad_()
    loss = criterion(logits, target, epoch)
    loss.backward()
    assert loss.item() == pytest.approx(value, abs=1e-5)
    torch.testing.assert_close(logits.grad.flatten(), torch.tensor(grad), atol=1e-5, rtol=1e-6)


def _softmax(z: list[float], t: list[float]) -> list[float]:
    e = [math.exp(v / tc) for v, tc in zip(z, t)]
    return [v / sum(e) for v in e]


def ride_loss_by_hand(
    experts: list[list[list[float]]],
    y: list[int],
    margins: list[float],
    lam: float,
    t: list[float],
    t_bar: float,
    w: list[float],
) -> float:
    """The equation in plain Python: experts[k][i] are expert k's logits of sample i."""
    total = 0.0
    n = len(y)
    for z_k in experts:
        ce = [
            -math.log(
                _softmax([v - (margins[y[i]] if c == y[i] else 0.0) for c, v in enumerate(z_k[i])], [1.0] * len(t))[
                    y[i]
                ]
            )
            for i in range(n)
        ]
        total += sum(w[y[i]] * ce[i] for i in range(n)) / sum(w[y[i]] for i in range(n))
        kl = 0.0
        for i in range(n):
            mean = [sum(e[i][c] for e in experts) / len(experts) for c in range(len(t))]
            p, q = _softmax(mean, t), _softmax(z_k[i], t)
            kl += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
        total += lam * t_bar**2 * kl / n
    return total


def test_ride_loss_by_hand_before_and_after_reweighting():
    counts = [100, 1]  # m = n^(-1/4) = [0.3162, 1], rescaled to max 0.5, times s = 30
    margins = [30 * 0.5 * 100**-0.25, 15.0]
    w = [1e-4 / (1 - 0.9999**100), 1.0]  # (1 - beta) / (1 - beta^n); the scale cancels in the mean
    raw = [1 + 2 * 0.05 * 100 / 101 - 0.05, 1 + 2 * 0.05 * 1 / 101 - 0.05]  # C p_c alpha + 1 - alpha
    t = [v / max(raw) for v in raw]
    experts = [[[2.0, -1.0], [0.5, 3.0]], [[-1.5, 0.0], [4.0, 1.0]]]
    y = [0, 1]
    criterion = RIDELoss(counts, diversity_factor=-0.45, reweight_epoch=5, reweight_factor=0.05)
    logits = torch.tensor(experts).transpose(0, 1)  # [B, E, C]
    before = ride_loss_by_hand(experts, y, margins, -0.45, [1.0, 1.0], 1.0, [1.0, 1.0])
    after = ride_loss_by_hand(experts, y, margins, -0.45, t, sum(t) / 2, w)
    assert criterion(logits, torch.tensor(y), 5).item() == pytest.approx(before, rel=1e-6)
    assert criterion(logits, torch.tensor(y), 6).item() == pytest.approx(after, rel=1e-6)
    assert before != pytest.approx(after, rel=1e-3)


def test_zero_logits_leave_only_the_margin_cross_entropy():
    # identical experts: KL = 0; CE of [-s m_y at y, 0 elsewhere] = log(1 + (C - 1) e^{s m_y})
    criterion = RIDELoss([100, 1, 1], diversity_factor=-0.45, reweight_epoch=10)
    loss = criterion(torch.zeros(2, 3, 3), torch.tensor([0, 2]), 1)
    s_m = [30 * 0.5 * 100**-0.25, 15.0]
    expected = 3 * sum(math.log(1 + 2 * math.exp(v)) for v in s_m) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_diversity_temperatures_by_hand():
    t = diversity_temperatures([100, 1], reweight_factor=0.05)
    raw = [0.95 + 0.1 * 100 / 101, 0.95 + 0.1 / 101]
    torch.testing.assert_close(t, torch.tensor([1.0, raw[1] / raw[0]]))
    assert RIDELoss([100, 1], reweight_factor=0.05).mean_temperature == pytest.approx((1 + raw[1] / raw[0]) / 2)
    with pytest.raises(ConfigError, match="too large"):
        diversity_temperatures([100, 1], reweight_factor=1.5)


def test_gradient_by_hand():
    # T = 1, plain CE: dL/dz_k = [softmax(z_k - s m_y 1_y) - 1_y + lambda (softmax(z_k) - p)] / B with
    # p = softmax(mean_j z_j) a constant. (Were p differentiated, its gradient would cancel anyway:
    # sum_k (log p - log q_k) is the same for every class when p is the softmax of the experts' mean.)
    criterion = RIDELoss([100, 1, 1], diversity_factor=-0.45, reweight_epoch=10)
    z = torch.tensor([[[3.0, 0.0, -1.0], [0.5, 2.0, 0.0]]], requires_grad=True)  # B = 1, E = 2
    criterion(z, torch.tensor([1]), 1).backward()
    margin = torch.tensor([0.0, 15.0, 0.0])
    p = torch.softmax(z.detach().mean(1)[0], 0)
    onehot = torch.tensor([0.0, 1.0, 0.0])
    for k in range(2):
        zk = z.detach()[0, k]
        expected = torch.softmax(zk - margin, 0) - onehot - 0.45 * (torch.softmax(zk, 0) - p)
        torch.testing.assert_close(z.grad[0, k], expected, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- routers

B, E, C, D, K = 8, 3, 6, 4, 3


def router_inputs():
    g = torch.Generator().manual_seed(35)
    logits = torch.randn(B, E, C, generator=g) * 6
    feature_maps = torch.rand(B, E, D, 2, 2, generator=g)
    target = torch.randint(0, C, (B,), generator=g)
    hidden_w = torch.randn(E - 1, 16, D, generator=g) * 0.5
    hidden_b = torch.randn(E - 1, 16, generator=g) * 0.1
    decide_w = torch.randn(1, K + 16, generator=g) * 0.3
    decide_b = torch.randn(1, generator=g) * 0.1
    return logits, feature_maps, target, hidden_w, hidden_b, decide_w, decide_b


OFFICIAL_ROUTER_LOSS = 26.606508
OFFICIAL_ROUTER_GRADS = {
    "hidden.0.weight": [
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        1.0282114,
        1.043058,
        1.1749628,
        1.4571768,
        0,
        0,
        0,
        0,
        -1.5248228,
        -1.5468404,
        -1.7424533,
        -2.1609726,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        -1.2097375,
        -1.2272054,
        -1.3823974,
        -1.7144351,
        0.5604791,
        0.49121457,
        0.60154164,
        0.78438652,
        0,
        0,
        0,
        0,
        -0.047025666,
        -0.047704689,
        -0.053737406,
        -0.066644572,
        0,
        0,
        0,
        0,
        -0.93497479,
        -0.9484753,
        -1.0684191,
        -1.3250424,
        -1.8472441,
        -1.8739172,
        -2.1108923,
        -2.6179066,
        -1.0165926,
        -1.0312717,
        -1.1616859,
        -1.4407109,
        0,
        0,
        0,
        0,
    ],
    "hidden.0.bias": [
        0,
        0,
        2.4532843,
        0,
        -3.6381857,
        0,
        0,
        -2.8864009,
        1.2701766,
        0,
        -0.11220195,
        0,
        -2.2308245,
        -4.407474,
        -2.4255624,
        0,
    ],
    "hidden.1.weight": [
        0.71318024,
        0.78600204,
        1.7716144,
        0.7904495,
        0.83175445,
        0.91668373,
        2.0661654,
        0.92187071,
        0.45537686,
        0.49154153,
        1.0940248,
        0.50029111,
        0.15603024,
        0.10183332,
        0.32727042,
        0.20069247,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        -0.20167293,
        -0.22226547,
        -0.50097662,
        -0.22352313,
        -0.50891489,
        -0.56087941,
        -1.2641978,
        -0.56405312,
        0.25552937,
        0.28162119,
        0.63476181,
        0.28321466,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        -0.39332712,
        -0.4334892,
        -0.97706586,
        -0.43594205,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ],
    "hidden.1.bias": [
        2.2162027,
        2.5846715,
        1.3839284,
        0.42369375,
        0,
        0,
        -0.6266973,
        -1.5814495,
        0.79405594,
        0,
        0,
        0,
        -1.2222614,
        0,
        0,
        0,
    ],
    "decide.weight": [
        -70.572609,
        -39.570057,
        -14.774486,
        -0.53129297,
        -1.3233094,
        -3.0402646,
        -0.13233028,
        -8.7854795,
        0,
        -2.4723508,
        -6.1587954,
        -2.0901804,
        0,
        -6.2796874,
        0,
        -10.333745,
        -4.994997,
        -3.3274674,
        0,
    ],
    "decide.bias": [-15.639429],
}
OFFICIAL_TARGETS = [[0, 0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]]
OFFICIAL_ROUTED = [
    0.93566787,
    0.39521134,
    -4.788414,
    1.0584145,
    -1.7841811,
    2.0054553,
    -0.9089998,
    -8.47159,
    -1.7965611,
    -12.936453,
    2.9641414,
    14.765009,
    1.1340027,
    -10.857616,
    10.647229,
    9.5081892,
    -6.0270925,
    -10.229097,
    6.4333105,
    3.6284003,
    -4.6883712,
    1.4428798,
    -7.1286716,
    -11.334593,
    -1.4407026,
    -3.6839535,
    0.90298003,
    -1.022338,
    -1.2304689,
    -4.6841626,
    -11.571785,
    5.0971746,
    -10.940933,
    2.3741672,
    -7.2985592,
    2.5175903,
    4.9856753,
    -3.6505601,
    -7.4000978,
    1.7500269,
    3.2027931,
    -8.6898756,
    4.2800374,
    -5.5521941,
    4.4291425,
    -1.8957595,
    -6.3596244,
    -4.1295471,
]
OFFICIAL_USED = [2, 1, 1, 1, 3, 1, 1, 3]


class FixedExperts(nn.Module):
    """Stands in for the backbone: sample ids in, fixed per-expert logits and pooled features out."""

    def __init__(self, logits: torch.Tensor, features: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)
        self.register_buffer("features", features)
        self.num_experts, self.num_features = logits.shape[1], features.shape[2]

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, 0].long()

    def forward_expert(self, ids: torch.Tensor, k: int):
        return self.logits[ids, k].clone(), self.features[ids, k]

    def forward(self, x: torch.Tensor) -> ExpertOutputs:
        ids = self.forward_trunk(x)
        return ExpertOutputs(self.logits[ids], self.features[ids])


def smoke_ride(num_classes: int, sets: tuple[str, ...] = (), counts=None) -> RIDE:
    cfg = resolve_config("ride", "synthetic_lt", "smoke", list(sets))
    counts = np.arange(num_classes, 0, -1) * 10 if counts is None else np.asarray(counts)
    return RIDE(cfg, DataInfo(num_classes, 3, 16, counts))


def ride_with_fixed_experts() -> tuple[RIDE, torch.Tensor, torch.Tensor]:
    logits, maps, target, hw, hb, dw, db = router_inputs()
    method = smoke_ride(C)  # smoke preset: 3 experts, top_k 3
    method.net = FixedExperts(logits, maps.mean((3, 4)))
    router = ExpertRouter(num_experts=E, feature_dim=D, top_k=K)
    with torch.no_grad():
        for i in range(E - 1):
            router.hidden[i].weight.copy_(hw[i])
            router.hidden[i].bias.copy_(hb[i])
        router.decide.weight.copy_(dw)
        router.decide.bias.copy_(db)
    method.router = router
    return method, torch.arange(B, dtype=torch.float).view(B, 1, 1, 1), target


def test_router_loss_and_gradients_equal_the_official_code():
    method, x, target = ride_with_fixed_experts()
    loss = method.router_step(Batch([x], target, torch.arange(B)))
    loss.backward()
    assert loss.item() == pytest.approx(OFFICIAL_ROUTER_LOSS, abs=1e-5)
    for name, p in method.router.named_parameters():
        torch.testing.assert_close(
            p.grad.flatten(),
            torch.tensor(OFFICIAL_ROUTER_GRADS[name], dtype=torch.float32),
            atol=1e-5,
            rtol=1e-6,
            msg=name,
        )
    logits = router_inputs()[0]
    assert routing_targets(logits, target).int().T.tolist() == OFFICIAL_TARGETS


def test_test_time_routing_equals_the_official_code_and_is_counted():
    method, x, _ = ride_with_fixed_experts()
    method.eval()
    tally = method.eval_counters()
    routed, used = method.route(x)
    torch.testing.assert_close(routed.flatten(), torch.tensor(OFFICIAL_ROUTED), atol=1e-5, rtol=1e-6)
    assert used.tolist() == OFFICIAL_USED
    torch.testing.assert_close(method.predict(x), routed)
    counters = {k: v.tolist() for k, v in tally.tensors.items()}
    assert counters["experts_used"] == [5, 1, 2]
    summary = tally.summarize(counters)
    assert summary["experts_used_share"] == [5 / 8, 1 / 8, 2 / 8]
    assert summary["mean_experts"] == pytest.approx(13 / 8) and summary["routing"] is True
    # a sample's prediction is the mean of the experts it used
    logits = router_inputs()[0]
    for i, k in enumerate(OFFICIAL_USED):
        torch.testing.assert_close(routed[i], logits[i, :k].mean(0))


def test_routing_targets_by_hand():
    # target class 0; ensembles are cumulative sums of the expert logits
    logits = torch.tensor(
        [
            [[1.0, 0.0], [-3.0, 0.0], [5.0, 0.0]],  # right, wrong, right -> router 1 should pass on
            [[0.0, 1.0], [2.0, 0.0], [0.0, 9.0]],  # wrong, right, wrong -> router 0 should pass on
            [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]],  # never right -> never worth it
            [[0.0, 1.0], [0.0, 1.0], [3.0, 0.0]],  # wrong, wrong, right -> both pass on
        ]
    )
    assert routing_targets(logits, torch.zeros(4, dtype=torch.long)).tolist() == [
        [False, True],
        [True, False],
        [False, False],
        [True, True],
    ]


def test_router_loss_by_hand():
    logits = torch.tensor(
        [
            [[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]],  # right from the start: no router should pass on
            [[0.0, 1.0], [3.0, 0.0], [0.0, 0.0]],  # wrong, then right with expert 1: router 0 should pass on
        ]
    )
    target = torch.tensor([0, 0])
    assert routing_targets(logits, target).tolist() == [[False, False], [True, False]]
    r = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    router0 = (-math.log(1 - sig(0.5)) - 100 * math.log(sig(2.0))) / 2  # the positive weighted by 100
    router1 = (-math.log(1 - sig(-1.0)) - math.log(1 - sig(0.3))) / 2
    loss = RouterLoss(pos_weight=100.0)(r, logits, target)
    assert loss.item() == pytest.approx((router0 + router1) / 2, rel=1e-6)


# ----------------------------------------------------------------------------- stages


def test_router_stage_trains_only_routers_with_frozen_batchnorm():
    torch.manual_seed(0)
    method = smoke_ride(10)
    method.enter_stage("train")
    assert method.router is None and all(p.requires_grad for p in method.parameters())
    method.enter_stage("router")
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("router.") for n in trainable)
    assert len(method.router.hidden) == 2 and method.router.decide.in_features == 3 + 16
    method.set_train_mode("router")
    assert not any(m.training for m in method.net.modules()) and method.router.training
    before = {k: v.clone() for k, v in method.net.state_dict().items()}
    routers_before = [p.clone() for p in method.router.parameters()]
    opt = torch.optim.SGD(
        [p for g in method.param_groups("router", method.cfg.stages["router"].optim) for p in g["params"]], lr=0.1
    )
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    out = method.train_step(Batch([x], y, torch.arange(16)), StepContext("router", 1, 1, 0, 1))
    out["loss"].backward()
    opt.step()
    after = method.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert any(not torch.equal(a, b) for a, b in zip(routers_before, method.router.parameters()))


def test_training_step_uses_the_epoch_for_reweighting():
    torch.manual_seed(0)
    method = smoke_ride(10, ("method.reweight_epoch=3",))
    method.eval()  # BatchNorm in eval mode so both calls see the same logits
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    batch = Batch([x], y, torch.arange(8))
    logits = method.net(x).logits
    for epoch in (3, 4):
        expected = method.criterion(logits, y, epoch)
        got = method.train_step(batch, StepContext("train", epoch, 10, 0, 1))["loss"]
        torch.testing.assert_close(got, expected)
    assert method.criterion(logits, y, 3).item() != pytest.approx(method.criterion(logits, y, 4).item())


def test_reweight_epoch_minus_one_never_reweights():
    # official RIDELoss: reweight_epoch == -1 leaves per_cls_weights_base/diversity unset for ever
    torch.manual_seed(0)
    logits, y = 5 * torch.randn(6, 3, len(COUNTS)), torch.randint(0, len(COUNTS), (6,))
    never = RIDELoss(COUNTS, diversity_factor=-0.45, reweight_epoch=-1)
    plain = RIDELoss(COUNTS, diversity_factor=-0.45, reweight_epoch=10**9)  # not reached in any real run
    for epoch in (1, 2, 200):
        torch.testing.assert_close(never(logits, y, epoch), plain(logits, y, epoch))
    assert never(logits, y, 200).item() != pytest.approx(RIDELoss(COUNTS, reweight_epoch=0)(logits, y, 200).item())
    with pytest.raises(ConfigError, match="-1 for never"):
        smoke_ride(10, ("method.reweight_epoch=-2",))


def test_without_router_stage_prediction_is_the_mean_of_all_experts():
    torch.manual_seed(0)
    method = smoke_ride(10, ("stages.router.epochs=0",))
    method.enter_stage("train")
    method.enter_stage("router")
    assert method.router is None and all(p.requires_grad for p in method.parameters())
    method.eval()
    tally = method.eval_counters()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        heads = method.predict_heads(x)
        torch.testing.assert_close(method.predict(x), method.net(x).logits.mean(1))
    assert sorted(heads) == ["all_experts", "expert1", "expert2", "expert3"]
    torch.testing.assert_close(heads["all_experts"], method.net(x).logits.mean(1).detach())
    counters = {k: v.tolist() for k, v in tally.tensors.items()}
    assert counters["experts_used"] == [0, 0, 5]
    per_image = count_macs(method.net, lambda: method.net(x[:1]))
    assert counters["macs"] == [5 * per_image]
    summary = tally.summarize(counters)
    assert summary["mean_experts"] == 3 and summary["routing"] is False
    assert summary["gmacs_per_image"] == pytest.approx(per_image / 1e9)


def test_routed_macs_count_only_the_experts_and_routers_that_ran():
    torch.manual_seed(0)
    method = smoke_ride(10)
    method.enter_stage("train")
    method.enter_stage("router")
    method.eval()
    tally = method.eval_counters()
    x = torch.randn(12, 3, 16, 16)
    with torch.no_grad():  # shift router 0 so that it sends half of the samples on
        out = method.net(x)
        method.router.decide.bias -= method.router(0, out.features[:, 0], out.logits[:, 0]).median()
    with torch.no_grad():
        _, used = method.route(x)
        method.predict(x)
        net = method.net
        trunk = count_macs(net, lambda: net.forward_trunk(x[:1]))
        shared = net.forward_trunk(x[:1])
        expert = count_macs(net, lambda: net.forward_expert(shared, 0))
    reached = [(used >= k).sum().item() for k in (1, 2, 3)]
    assert 0 < reached[1] < 12
    router_macs = 48 * 16 + (3 + 16)  # hidden Linear(48, 16) and the shared Linear(19, 1), per decision
    expected = 12 * trunk + sum(reached) * expert + (reached[0] + reached[1]) * router_macs
    assert tally.tensors["macs"].item() == expected
    assert tally.tensors["experts_used"].tolist() == np.bincount(used - 1, minlength=3).tolist()


def test_top_k_must_fit_the_classes_and_one_expert_has_nothing_to_route():
    with pytest.raises(ConfigError, match="top_k"):
        smoke_ride(2)
    with pytest.raises(ConfigError, match="nothing to route"):
        smoke_ride(10, ("method.num_experts=1",))
    single = smoke_ride(10, ("method.num_experts=1", "stages.router.epochs=0"))
    single.enter_stage("router")
    assert single.router is None and single.net.num_experts == 1


# ----------------------------------------------------------------------------- recipes


def test_step_schedule_is_the_official_custom_lr_and_cosine_is_cosine_annealing():
    steps_per_epoch = 3
    cifar = RIDE.presets["paper"]["cifar100_lt"]["stages"]
    cfg = StageConfig()
    apply_overlay(cfg, cifar["train"])
    ours = make_schedule(cfg.schedule, 0.1, steps_per_epoch, cfg.epochs)

    def custom_lr(i: int) -> float:  # RIDE train.py: gamma after step1, gamma^2 after step2, warmup (i+1)/5
        factor = 0.01**2 if i >= 180 else 0.01 if i >= 160 else 1.0
        return factor * (i + 1) / 5 if i < 5 else factor

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    official = torch.optim.lr_scheduler.LambdaLR(opt, custom_lr)
    for epoch in range(200):
        for j in range(steps_per_epoch):
            assert ours(epoch * steps_per_epoch + j) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        official.step()

    router = StageConfig()
    apply_overlay(router, cifar["router"])
    ours = make_schedule(router.schedule, 0.01, steps_per_epoch, router.epochs)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    official = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=0.0)
    for epoch in range(5):
        for j in range(steps_per_epoch):
            assert ours(epoch * steps_per_epoch + j) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        official.step()


def _epochs(sampler: str, labels: np.ndarray, num_classes: int, seed: int, epochs: int) -> list[torch.Tensor]:
    gens = lambda e: torch.Generator().manual_seed(seed * 1000 + e)  # noqa: E731
    return list(itertools.islice(SAMPLERS.get(sampler)(labels, num_classes, gens), epochs))


def test_class_balanced_sampler_behaves_like_the_official_balanced_sampler():
    """BalancedSampler: per draw a uniformly random class, then the next image of that class's
    shuffled bucket, reshuffled when used up; as many draws as images (retain_epoch_size). The
    sampler object lives as long as its loader, so buckets and positions carry over epochs."""
    labels = np.repeat([0, 1, 2], [1000, 100, 7])
    orders = _epochs("class_balanced", labels, 3, 0, 3)
    assert all(len(order) == len(labels) for order in orders)
    drawn = [labels[order.numpy()] for order in orders]
    for d in drawn:
        shares = np.bincount(d, minlength=3) / len(d)
        assert np.all(np.abs(shares - 1 / 3) < 0.04)
    for c in (1, 2):  # each full pass over a bucket is a permutation of it, across epoch ends too
        items = np.concatenate([o.numpy()[d == c] for o, d in zip(orders, drawn)])
        bucket = np.flatnonzero(labels == c)
        assert np.count_nonzero(drawn[0] == c) % len(bucket) != 0  # epoch 0 ends inside a pass
        passes = len(items) // len(bucket)
        assert passes >= 9
        for p in range(passes):
            assert sorted(items[p * len(bucket) : (p + 1) * len(bucket)]) == bucket.tolist()
    assert not torch.equal(orders[0], orders[1])
    assert not torch.equal(orders[0], _epochs("class_balanced", labels, 3, 1, 1)[0])
    # an empty class is never drawn (the official sampler would index an empty bucket)
    gaps = _epochs("class_balanced", np.repeat([0, 2], [30, 5]), 3, 0, 2)
    assert set(torch.cat(gaps).tolist()) == set(range(35))


def test_instance_sampler_is_a_fresh_permutation_each_epoch():
    orders = _epochs("instance", np.zeros(50, dtype=np.int64), 1, 0, 2)
    assert all(sorted(o.tolist()) == list(range(50)) for o in orders)
    assert torch.equal(orders[1], torch.randperm(50, generator=torch.Generator().manual_seed(1)))


def _apply(preset: dict) -> Config:
    stages = {"train": StageConfig(), "router": StageConfig()}
    cfg = Config("ride", "x", RIDEParams(), FileListParams(), stages)  # data.mean/std: file datasets
    apply_overlay(cfg, preset)
    return cfg


def test_paper_presets_carry_the_official_hyperparameters():
    cifar = _apply(RIDE.presets["paper"]["cifar100_lt"])
    t, r = cifar.stages["train"], cifar.stages["router"]
    assert cifar.model.arch == "resnet32_experts"
    assert (cifar.method.num_experts, cifar.method.reduce_dimension, cifar.method.use_norm) == (3, True, True)
    assert (cifar.method.diversity_factor, cifar.method.reweight_epoch, cifar.method.reweight_factor) == (
        -0.45,
        160,
        0.05,
    )
    assert (t.epochs, t.batch_size, t.augment, t.optim.lr, t.optim.weight_decay, t.optim.nesterov) == (
        200,
        128,
        ["pad_crop_flip_rotate"],
        0.1,
        5e-4,
        True,
    )
    assert (t.schedule.milestones, t.schedule.gamma, t.schedule.warmup_epochs) == ([160, 180], 0.01, 5)
    assert (r.epochs, r.batch_size, r.sampler, r.optim.lr, r.optim.weight_decay, r.schedule.name) == (
        5,
        512,
        "class_balanced",
        0.01,
        5e-4,
        "cosine",
    )
    assert (cifar.method.top_k, cifar.method.pos_weight) == (30, 100.0)

    for preset, arch in (
        ("paper", "resnext50_experts"),
        ("paper_r50", "resnet50_experts"),
        ("paper_r10", "resnet10_experts"),
    ):
        imnet = _apply(RIDE.presets[preset]["imagenet_lt"])
        t = imnet.stages["train"]
        # top_choices_num of config_imagenet_lt_{resnext50,resnet50,resnet10}_ride_ea.json
        assert imnet.model.arch == arch and imnet.method.top_k == (30 if arch == "resnet10_experts" else 50)
        assert (imnet.method.diversity_factor, imnet.method.reweight_epoch, imnet.method.reweight_factor) == (
            -0.2,
            80,
            0.02,
        )
        assert (t.epochs, t.batch_size, t.augment, t.optim.lr, t.optim.weight_decay) == (
            100,
            256,
            ["rrc_flip_jitter"],
            0.1,
            2e-4,
        )
        assert (t.schedule.milestones, t.schedule.gamma) == ([60, 80], 0.1)

    inat = _apply(RIDE.presets["paper"]["inat2018"])
    t = inat.stages["train"]
    assert inat.model.arch == "resnet50_experts" and inat.method.reweight_factor == 0.015
    assert (t.batch_size, t.optim.lr, t.augment) == (512, 0.2, ["rrc_flip"])
    assert inat.stages["router"].augment == ["rrc_flip"]
    # Normalize of data_loader/inaturalist_data_loaders.py
    assert (inat.data.mean, inat.data.std) == ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192))

    cifar10 = _apply(RIDE.presets["paper"]["cifar10_lt"])  # extension: CIFAR-100's recipe, top 5 of 10
    assert cifar10.method.top_k == 5 and cifar10.stages["train"].epochs == 200


def test_cifar10_paper_preset_builds_and_takes_a_training_and_a_router_step():
    from ltbench.registry import DATASETS, load_plugins

    load_plugins()
    if "cifar10_lt" not in DATASETS:
        pytest.skip("cifar10_lt is not registered in this checkout")
    torch.manual_seed(0)
    cfg = resolve_config("ride", "cifar10_lt", "paper")
    counts = np.maximum(1, (5000 * 0.01 ** (np.arange(10) / 9)).astype(int))
    method = RIDE(cfg, DataInfo(num_classes=10, in_chans=3, image_size=32, train_counts=counts))
    batch = Batch([torch.randn(4, 3, 32, 32)], torch.tensor([0, 3, 7, 9]), torch.arange(4))
    method.enter_stage("train")
    method.set_train_mode("train")
    method.train_step(batch, StepContext("train", 161, 200, 0, 1))["loss"].backward()
    method.zero_grad(set_to_none=True)
    method.enter_stage("router")
    method.set_train_mode("router")
    method.train_step(batch, StepContext("router", 1, 5, 0, 1))["loss"].backward()
    assert all(p.grad is not None for p in method.router.parameters())


@pytest.mark.parametrize(
    "preset, dataset",
    [
        ("paper", "cifar100_lt"),
        ("paper", "cifar10_lt"),
        ("paper", "imagenet_lt"),
        ("paper", "inat2018"),
        ("paper_r50", "imagenet_lt"),
        ("paper_r10", "imagenet_lt"),
    ],
)
def test_paper_presets_resolve_with_known_recipes(preset, dataset):
    cfg = resolve_registered("ride", dataset, preset)
    assert cfg.stages["router"].epochs == 5 and cfg.stages["router"].sampler == "class_balanced"


def test_cpu_preset_keeps_the_official_reweighting_rule_and_matches_its_ce_row():
    cfg = resolve_config("ride", "fmnist_lt", "cpu")
    train = cfg.stages["train"]
    assert cfg.model.arch == "resnet8_experts" and cfg.method.top_k == 5
    assert train.epochs == 20 and cfg.stages["router"].epochs == 5
    assert cfg.stages["router"].sampler == "class_balanced" and cfg.stages["router"].batch_size == 128
    # CIFAR's proportions (x0.01 at 160 and 180 of 200): re-weighting from the epoch whose lr is peak / 100
    assert train.schedule.milestones == [16, 18] and train.schedule.gamma == 0.01
    schedule = make_schedule(train.schedule, 1.0, 1, train.epochs)  # one step per epoch, peak 1
    lrs = [schedule(epoch) for epoch in range(train.epochs)]
    first_reweighted = cfg.method.reweight_epoch + 1  # 1-based epoch; lrs are 0-based
    assert lrs[first_reweighted - 1] == pytest.approx(0.01) and lrs[first_reweighted - 2] == pytest.approx(1.0)
    ce = resolve_config("ce", "fmnist_lt", "cpu_ride")  # the CE row RIDE is compared with: the same stage
    assert ce.model.arch == "resnet8" and ce.stages["train"] == train  # and the depth of RIDE's experts


# ----------------------------------------------------------------------------- paper scale


def test_paper_scale_resnext50_takes_a_training_and_a_router_step():
    torch.manual_seed(0)
    cfg = resolve_config(
        "ride", "synthetic_lt", "smoke", ["model.arch=resnext50_experts", "method.top_k=50", "method.reweight_epoch=80"]
    )
    method = RIDE(cfg, long_tailed_info(1000, 224))
    batch = Batch([torch.randn(2, 3, 224, 224)], torch.tensor([3, 999]), torch.arange(2))
    take_step(method, "train", batch, 81, 100)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.net.parameters())
    method.zero_grad(set_to_none=True)
    take_step(method, "router", batch, 1, 5)
    assert all(p.grad is not None for p in method.router.parameters())
    assert all(p.grad is None for p in method.net.parameters())
    method.eval()
    with torch.no_grad():
        assert method.predict(batch.x).shape == (2, 1000)


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.slow
def test_smoke_run_records_expert_usage_and_resumes_mid_stage(tmp_path):
    cfg = resolve_config("ride", "synthetic_lt", "smoke", SMALL_SYNTHETIC)
    reference = train(cfg, tmp_path / "reference", progress=False).record
    test = reference["splits"]["test"]
    assert reference["selection"]["stage"] == "router"
    assert set(test["heads"]) == {"main", "expert1", "expert2", "expert3", "all_experts"}
    used = test["counters"]["experts_used"]
    assert len(used) == 3 and sum(used) == sum(test["heads"]["main"]["total"])
    summary = test["summary"]
    assert summary["routing"] is True and sum(summary["experts_used_share"]) == pytest.approx(1.0)
    assert 1 <= summary["mean_experts"] <= 3 and summary["gmacs_per_image"] > 0
    # stop inside epoch 1 of stage train (5 steps per epoch), then inside the router stage
    for stop_after in (3, 11):
        out = tmp_path / f"stopped{stop_after}"
        with pytest.raises(TrainingInterrupted):
            train(cfg, out, progress=False, on_trainer=stop_at_step(stop_after))
        resumed = train(cfg, out, progress=False).record
        assert resumed["resumes"] == 1
        assert final_results(resumed) == final_results(reference)
