"""SAM as a stage optimizer option: two hand-computed steps through the trainer, the rho schedule,
and the refusals (gradient accumulation, a malformed schedule)."""

from __future__ import annotations

import contextlib

import pytest
import torch
import toy_methods  # noqa: F401  (registers toy_quadratic)

from ltbench.config import OptimConfig, resolve_config
from ltbench.errors import ConfigError
from ltbench.optim import SharpnessAware, sam_rho
from ltbench.runner import train

# L(w) = 0.5 w1^2 + w2^2, gradient g(w) = (w1, 2 w2), w0 = (3, 2), rho = 0.5, SGD lr 0.1, no
# momentum or decay. Step 1: g = (3, 4), |g| = 5, e = rho g / |g| = (0.3, 0.4), g(w + e) = (3.3, 4.8),
# w1 = w0 - 0.1 g(w + e) = (2.67, 1.52). Step 2: g = (2.67, 3.04), |g| = sqrt(16.3705) = 4.0460475,
# e = (0.3299516, 0.3756753), g(w + e) = (2.9999516, 3.7913506), w2 = (2.3700048, 1.1408649).
AFTER_ONE = [2.67, 1.52]
AFTER_TWO = [2.3700048358261094, 1.1408649445029013]


def weights_after(tmp_path, steps: int, *sets: str) -> list[float]:
    # synthetic_lt has 403 training images: batch 202 makes two steps per epoch, 403 makes one
    batch = {1: 403, 2: 202}[steps]
    cfg = resolve_config("toy_quadratic", "synthetic_lt", sets=[f"stages.train.batch_size={batch}", *sets])
    res = train(cfg, tmp_path / str(steps), progress=False)
    return torch.load(res.run.checkpoint, weights_only=False)["model"]["w"].tolist()


def test_two_sam_steps_through_the_trainer_equal_the_hand_computation(tmp_path):
    assert weights_after(tmp_path, 1, "stages.train.optim.sam_rho=0.5") == pytest.approx(AFTER_ONE, abs=1e-6)
    assert weights_after(tmp_path, 2, "stages.train.optim.sam_rho=0.5") == pytest.approx(AFTER_TWO, abs=1e-6)
    # without SAM: w - 0.1 g(w) = (2.7, 1.6)
    assert weights_after(tmp_path / "plain", 1) == pytest.approx([2.7, 1.6], abs=1e-6)


def test_the_ascent_step_alone_by_hand():
    w = torch.nn.Parameter(torch.tensor([3.0, 2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    (0.5 * w[0] ** 2 + w[1] ** 2).backward()
    sam = SharpnessAware(opt)
    sam.ascend(0.5)
    assert w.detach().tolist() == pytest.approx([3.3, 2.4])
    sam.restore()
    assert w.detach().tolist() == [3.0, 2.0]


def test_rho_schedule_by_epoch():
    cfg = OptimConfig(sam_rho=0.05, sam_rho_milestones=[5, 60, 75], sam_rho_values=[0.1, 0.5, 0.6])
    assert [sam_rho(cfg, e) for e in (0, 4, 5, 59, 60, 74, 75, 89)] == [0.05, 0.05, 0.1, 0.1, 0.5, 0.5, 0.6, 0.6]
    with pytest.raises(ConfigError, match="same length"):
        sam_rho(OptimConfig(sam_rho=0.1, sam_rho_milestones=[3]), 0)


def test_sam_with_gradient_accumulation_is_refused(tmp_path):
    cfg = resolve_config(
        "toy_quadratic", "synthetic_lt", sets=["stages.train.optim.sam_rho=0.1", "stages.train.accum_steps=2"]
    )
    with pytest.raises(ConfigError, match="SAM .* cannot accumulate gradients .*set accum_steps=1"):
        train(cfg, tmp_path, progress=False)


def _amp_on_cpu(init_scale: float):
    """An ``on_trainer`` hook: the trainer's AMP path (loss scaling) with a CPU GradScaler."""

    def hook(trainer) -> None:
        trainer.amp = True
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
        trainer.autocast = contextlib.nullcontext  # float32 compute; only the scaling is tested

    return hook


@pytest.mark.parametrize(
    ("init_scale", "expected", "final_scale"),
    [
        (1024.0, AFTER_TWO, 1024.0),  # each pass unscaled once: the same two steps as without AMP
        # scaled gradient (3, 4) x 1e38 overflows at w: step 1 is skipped and the scale halved;
        # step 2 is then the hand-computed first step
        (1e38, AFTER_ONE, 5e37),
    ],
    ids=["finite", "overflow"],
)
def test_sam_under_loss_scaling_unscales_each_pass_once(tmp_path, init_scale, expected, final_scale):
    cfg = resolve_config(
        "toy_quadratic", "synthetic_lt", sets=["stages.train.batch_size=202", "stages.train.optim.sam_rho=0.5"]
    )
    res = train(cfg, tmp_path, progress=False, on_trainer=_amp_on_cpu(init_scale))
    state = torch.load(res.run.checkpoint, weights_only=False)
    assert state["model"]["w"].tolist() == pytest.approx(expected, rel=1e-6)
    assert state["scaler"]["scale"] == pytest.approx(final_scale, rel=1e-6)
