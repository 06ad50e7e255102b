"""tau-normalisation (Kang et al., ICLR 2020, Sec. 4): no training; divide each class's classifier
weights of a finished `ce` run by their norm to the power tau, tau chosen on the val split.

Reference: facebookresearch/classifier-balancing ``tau_norm.py`` (see
:mod:`ltbench.methods.decoupling` for what the three decoupled methods share).

- **Classifier**: w~_i = w_i / ||w_i||^tau (Sec. 4, tau-normalised classifier), logits
  z_i = w~_i^T f(x) on the `ce` run's features f(x), without the bias (``tau_norm.py`` scores
  ``feats @ ws.T``). tau = 1 is L2 normalisation, tau = 0 the plain weights.
- **Choice of tau**: the grid ``np.linspace(0, 2, 21)`` of ``tau_norm.py``; the tau with the best
  balanced (mean per-class) val accuracy, the figure ``tau_norm.py`` prints, the smallest tau on a
  tie. The paper picks tau on the validation set, never on test; ``run.json``
  ``selection.chosen_on_val`` keeps the chosen tau and every grid point's val accuracy.
  ``method.tau >= 0`` fixes tau instead.

It has no stage: the run evaluates the `ce` run's network, tau-normalised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ltbench.errors import ConfigError
from ltbench.precision import official_precision
from ltbench.registry import register_method

from .ce import CPU_FMNIST, LDAM_DRW_CIFAR
from .decoupling import Decoupled, DecoupledParams

TAU_GRID = tuple(float(t) for t in np.round(np.linspace(0, 2, 21), 10))  # tau_norm.py


def tau_normalized(weight: Tensor, tau: float) -> Tensor:
    """w_i / ||w_i||^tau for every row w_i of ``weight`` [C, D]."""
    return weight / weight.norm(dim=1, keepdim=True).pow(tau)


@dataclass
class TauNormParams(DecoupledParams):
    tau: float = -1.0  # the exponent of the norm; < 0 = choose it on the val split over TAU_GRID


@register_method("tau_norm")
class TauNormalization(Decoupled):
    """tau-norm: a `ce` run's classifier weights divided by their norm^tau, tau chosen on val."""

    Params = TauNormParams
    stage_names = ()  # no training

    def __init__(self, cfg, info, teachers=None) -> None:
        super().__init__(cfg, info, teachers)
        self.register_buffer("tau", torch.tensor(max(self.hp.tau, 0.0)))
        self._grid_heads = False  # predict_heads scores every grid tau while tau is being chosen

    def logits(self, features: Tensor, tau: float | Tensor) -> Tensor:
        return features @ tau_normalized(self.net.fc.weight, tau).t()  # z_i = w~_i^T f(x), no bias

    def predict(self, x: Tensor) -> Tensor:
        return self.logits(self.net.forward_features(x), self.tau)

    def predict_heads(self, x: Tensor) -> dict[str, Tensor]:
        if not self._grid_heads:
            return {}
        features = self.net.forward_features(x)
        return {f"tau={tau:g}": self.logits(features, tau) for tau in TAU_GRID}

    def choose_on_val(self, evaluate: Callable[[], dict] | None) -> dict | None:
        if self.hp.tau >= 0:
            return None
        if evaluate is None:
            raise ConfigError(
                "tau_norm chooses tau on the val split and this dataset has none: give it one "
                "(e.g. data.val_per_class) or fix tau with --set method.tau=1.0"
            )
        self._grid_heads = True
        try:
            heads = evaluate()["heads"]
        finally:
            self._grid_heads = False
        balanced = {}
        for tau in TAU_GRID:
            counts = heads[f"tau={tau:g}"]
            correct, total = np.asarray(counts["correct"], float), np.asarray(counts["total"], float)
            balanced[f"{tau:g}"] = float(np.mean(correct[total > 0] / total[total > 0]) * 100)
        best = max(TAU_GRID, key=lambda tau: (balanced[f"{tau:g}"], -tau))  # the smallest tau on a tie
        self.tau.fill_(best)
        return {"tau": best, "val_balanced_by_tau": balanced}


# no training: only the representation's preset and its backbone differ (ResNet-32 for the CIFAR `paper`
# recipe and the full board, on `ce --preset paper` / `ce --preset full`)
PAPER = {"model": LDAM_DRW_CIFAR["model"]}
TauNormalization.defaults = PAPER
TauNormalization.presets = {
    "paper": {"cifar10_lt": PAPER, "cifar100_lt": PAPER},
    "cpu": {"fmnist_lt": {"model": CPU_FMNIST["model"]}},
    "full": {"fmnist_lt": PAPER},
    "smoke": {"*": {}},
}

# precision of the official code, training and evaluation: facebookresearch/classifier-balancing
# run_networks.py has no autocast (fp32)
official_precision(TauNormalization.presets, "fp32")
