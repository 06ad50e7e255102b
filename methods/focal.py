"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) as a long-tailed
classification baseline: one sigmoid per class, easy examples down-weighted by (1 - p_t)^gamma.

References: the paper (Eq. 4, 5; the prior bias of Sec. 3.3) and the "Focal" baseline of the
class-balanced loss code, richardaecn/class-balanced-loss (``src/cifar_main.py`` ``focal_loss``,
``cifar_im_trainval.sh``: ``--loss-type=focal --beta=0 --gamma=1.0``), whose CIFAR recipe the
``paper`` presets follow.

- **Loss**: :class:`~ltbench.losses.FocalLoss`, gamma 1.0, no alpha (Eq. 4, as the CIFAR runs);
  ``method.alpha >= 0`` gives Eq. 5's alpha-balanced form (the paper's detection setting: 0.25, gamma 2).
- **Model**: the `ce` backbone, classifier bias at -log(C - 1) and without weight decay (as `cb`).
- **Prediction**: the raw logits.

The ``paper`` recipe is `cb`'s (the `ce` paper recipe: ResNet-32, 200 epochs, SGD 0.1, weight
decay 2e-4, warmup 5, x0.01 at 160 and 180), with the same warmup deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ltbench.config import Config
from ltbench.losses import FocalLoss
from ltbench.method import DataInfo
from ltbench.precision import official_precision
from ltbench.registry import register_method

from .cb import sigmoid_prior_bias
from .ce import CPU_FMNIST, LDAM_DRW_CIFAR, CrossEntropy, OneBackbone


@dataclass
class FocalParams:
    gamma: float = 1.0  # focusing parameter (Eq. 4)
    alpha: float = -1.0  # Eq. 5's alpha on the positives (1 - alpha on the negatives); < 0 = none


@register_method("focal")
class Focal(OneBackbone):
    """Sigmoid focal loss on one backbone, prior-initialised bias, raw logits at test time."""

    Params = FocalParams
    defaults = {**LDAM_DRW_CIFAR, "method": {"gamma": 1.0, "alpha": -1.0}}
    presets = {
        "paper": {"cifar10_lt": defaults, "cifar100_lt": defaults},
        # the full board: the CIFAR recipe on fmnist_lt, LDAM-DRW's schedule, so compared with `ce --preset full`
        "full": {"fmnist_lt": defaults},
        "cpu": {"fmnist_lt": {**CPU_FMNIST, "method": {"gamma": 1.0, "alpha": -1.0}}},
        "smoke": CrossEntropy.presets["smoke"],
    }

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        sigmoid_prior_bias(self.net, info.num_classes)

    def build_criterion(self, info: DataInfo) -> nn.Module:
        return FocalLoss(self.hp.gamma, self.hp.alpha)

    def no_weight_decay(self) -> set[str]:
        return {"net.fc.bias"}


# precision of the official code, training and evaluation: richardaecn/class-balanced-loss
# src/cifar_main.py (TensorFlow, float32 model)
official_precision(Focal.presets, "fp32")
