"""Logit adjustment: the loss against hand-derived values and the official formula, the method's
presets, a smoke run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltbench.config import resolve_config
from ltbench.losses import BalancedCE
from ltbench.runner import train

COUNTS = [100, 40, 10, 3]
LOGITS = torch.tensor(
    [[1.5, -0.3, 0.2, 0.8], [-1.0, 2.0, 0.5, -0.5], [0.3, 0.1, -2.0, 1.2], [0.0, 0.4, 0.9, -0.7], [2.2, -1.1, 0.6, 0.3]]
)
TARGET = torch.tensor([0, 1, 2, 3, 3])

# Reference values: a float32 transcription of the official build_loss_fn (google-research
# logit_adjustment/utils.py: logits + log(base_probs ** tau + 1e-12), sparse softmax cross-entropy,
# reduce_mean), base_probs = COUNTS / sum(COUNTS); gradients with respect to the logits.
OFFICIAL = {
    1.0: (
        3.098379611968994,
        [
            [-0.019538605585694313, 0.011932025663554668, 0.004918146412819624, 0.0026884337421506643],
            [0.020982299000024796, -0.03142371401190758, 0.009403614327311516, 0.0010378188453614712],
            [0.14171269536018372, 0.046409815549850464, -0.19857920706272125, 0.010456711053848267],
            [0.1076665148139, 0.06424782425165176, 0.026481688022613525, -0.19839604198932648],
            [0.19241316616535187, 0.002838723361492157, 0.0038847539108246565, -0.1991366297006607],
        ],
    ),
    0.5: (
        2.363051652908325,
        [
            [-0.0433507077395916, 0.01637677662074566, 0.01350037008523941, 0.013473577797412872],
            [0.012981943786144257, -0.03508763387799263, 0.0183984637260437, 0.003707214491441846],
            [0.10123858600854874, 0.05242243409156799, -0.19679026305675507, 0.04312923550605774],
            [0.07124235481023788, 0.06721808016300201, 0.0554119348526001, -0.1938723772764206],
            [0.17968188226222992, 0.004191432148218155, 0.01147183682769537, -0.19534516334533691],
        ],
    ),
}


@pytest.mark.parametrize("tau", list(OFFICIAL))
def test_value_and_gradient_equal_the_official_code(tau):
    z = LOGITS.clone().requires_grad_(True)
    loss = BalancedCE(COUNTS, tau)(z, TARGET)
    loss.backward()
    value, grad = OFFICIAL[tau]
    assert loss.item() == pytest.approx(value, abs=1e-5)
    assert torch.allclose(z.grad, torch.tensor(grad), atol=1e-5)


def test_by_hand():
    # zero logits, prior (0.75, 0.25): the adjusted softmax is the prior, so L = -log pi_y
    loss = BalancedCE([3, 1])
    zero = torch.zeros(1, 2)
    assert loss(zero, torch.tensor([1])).item() == pytest.approx(-math.log(0.25), rel=1e-6)
    assert loss(zero, torch.tensor([0])).item() == pytest.approx(-math.log(0.75), rel=1e-6)
    # a uniform prior shifts every logit equally: plain cross-entropy
    assert BalancedCE([5, 5, 5])(LOGITS[:, :3], torch.tensor([0, 1, 2, 0, 1])).item() == pytest.approx(
        F.cross_entropy(LOGITS[:, :3], torch.tensor([0, 1, 2, 0, 1])).item(), rel=1e-6
    )
    # tau = 0: no adjustment
    assert BalancedCE(COUNTS, 0.0)(LOGITS, TARGET).item() == pytest.approx(
        F.cross_entropy(LOGITS, TARGET).item(), rel=1e-6
    )


def test_presets_share_the_ce_backbone_and_budget():
    for preset in ("cpu", "cpu_ride", "cpu_vit"):
        la, ce = resolve_config("la", "fmnist_lt", preset), resolve_config("ce", "fmnist_lt", preset)
        assert la.model == ce.model and la.stages == ce.stages and la.method.tau == 1.0
    c10 = resolve_config("la", "cifar10_lt", "paper").stages["train"]
    assert (c10.epochs, c10.schedule.warmup_epochs, c10.schedule.milestones) == (1241, 20, [604, 926, 1128])
    assert (c10.optim.lr, c10.optim.nesterov, c10.optim.weight_decay, c10.drop_last) == (0.1, True, 2e-4, True)
    c100 = resolve_config("la", "cifar100_lt", "paper").stages["train"]
    assert (c100.epochs, c100.schedule.warmup_epochs, c100.schedule.milestones) == (1419, 22, [691, 1059, 1290])


def test_smoke_run_predicts_with_unadjusted_logits(tmp_path):
    res = train(resolve_config("la", "synthetic_lt", "smoke", ["data.img_max=40"]), tmp_path, progress=False)
    assert res.record["method"] == "la" and sum(res.record["splits"]["test"]["heads"]["main"]["total"]) == 200
