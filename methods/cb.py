"""Class-balanced loss (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
CVPR 2019): each sample's loss weighted by the inverse effective number of its class.

Reference: the official code, richardaecn/class-balanced-loss (``src/cifar_main.py``:
``_tower_fn``, ``focal_loss``, the weights in ``main``; ``src/model_base.py``;
``cifar_im_trainval_cb.sh``).

- **Weights**: E_n = (1 - beta^n) / (1 - beta) (Eq. 2), w_c = 1 / E_{n_c} (Eq. 6) normalised to
  sum C (Sec. 4).
- **Loss**: :class:`~ltbench.losses.ClassBalancedLoss`, ``method.loss_type`` softmax (Eq. 8),
  sigmoid (Eq. 11) or focal with gamma (Eq. 13), each averaged over the batch as the official code does.
- **Model**: the `ce` backbone; for sigmoid and focal the classifier bias starts at
  -log(C - 1) (prior pi = 1/C, ``model_base._fully_connected``) and takes no weight decay.
- **Prediction**: the raw logits (argmax of the sigmoids and the softmax alike).

The ``paper`` presets follow ``cifar_main.py``'s defaults with ``cifar_im_trainval_cb.sh``: ResNet-32,
200 epochs, batch 128, SGD 0.1 (momentum 0.9), weight decay 2e-4, linear warmup over 5 epochs,
lr x0.01 at 160 and x0.0001 at 180 (the `ce` paper recipe), beta 0.9999, focal with gamma 1.0
(the script's CB run); ``--set method.loss_type=softmax`` / ``sigmoid`` give its other two rows.
Deviation: the official warmup is ``lr * epoch / 5`` on the fractional epoch, ltbench's per-epoch
``lr (i + 1) / 5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ltbench.config import Config
from ltbench.losses import ClassBalancedLoss
from ltbench.method import DataInfo
from ltbench.precision import official_precision
from ltbench.registry import register_method

from .ce import CPU_FMNIST, LDAM_DRW_CIFAR, CrossEntropy, OneBackbone


def sigmoid_prior_bias(net: torch.nn.Module, num_classes: int) -> None:
    """The classifier bias at -log((1 - pi) / pi) with pi = 1/C, so every sigmoid starts near pi
    (Lin et al. 2017, Sec. 3.3 and 4.1; Cui et al. 2019, Sec. 5.2; ``model_base._fully_connected``
    for sigmoid and focal)."""
    with torch.no_grad():
        net.fc.bias.fill_(-math.log(num_classes - 1))


@dataclass
class CBParams:
    beta: float = 0.9999  # effective-number beta (Eq. 2); 0 = no re-weighting (the plain loss)
    loss_type: str = field(default="focal", metadata={"choices": ("softmax", "sigmoid", "focal")})
    gamma: float = 1.0  # focusing parameter of the focal variant (Eq. 13)


@register_method("cb")
class ClassBalanced(OneBackbone):
    """Class-balanced loss: softmax / sigmoid / focal weighted by inverse effective class size."""

    Params = CBParams
    defaults = {**LDAM_DRW_CIFAR, "method": {"beta": 0.9999, "loss_type": "focal", "gamma": 1.0}}
    presets = {
        "paper": {"cifar10_lt": defaults, "cifar100_lt": defaults},
        # the full board: the CIFAR recipe on fmnist_lt, LDAM-DRW's schedule, so compared with `ce --preset full`
        "full": {"fmnist_lt": defaults},
        "cpu": {"fmnist_lt": {**CPU_FMNIST, "method": {"beta": 0.9999, "loss_type": "focal", "gamma": 1.0}}},
        "smoke": CrossEntropy.presets["smoke"],
    }

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        if self.hp.loss_type != "softmax":
            sigmoid_prior_bias(self.net, info.num_classes)

    def build_criterion(self, info: DataInfo) -> nn.Module:
        hp = self.hp
        return ClassBalancedLoss(info.train_counts, hp.beta, hp.loss_type, hp.gamma)

    def no_weight_decay(self) -> set[str]:
        return {"net.fc.bias"} if self.hp.loss_type != "softmax" else set()  # cifar_main.py reg_loss


# precision of the official code, training and evaluation: richardaecn/class-balanced-loss
# src/cifar_main.py (TensorFlow, float32 model)
official_precision(ClassBalanced.presets, "fp32")
