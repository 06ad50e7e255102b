"""Logit adjustment: Long-tail learning via logit adjustment (Menon et al., ICLR 2021), the
logit-adjusted loss.

Reference: the official code, google-research/google-research ``logit_adjustment/`` (``main.py``,
``utils.py``: ``build_loss_fn``, ``dataset_mappings``; ``models.py``).

- **Loss**: :class:`~ltbench.losses.BalancedCE`, softmax cross-entropy on
  z + log(pi^tau + 1e-12), pi the training class prior, tau = 1 (``--mode=loss``).
- **Model and prediction**: the plain backbone of `ce` and its raw logits; the adjustment is a
  training-time device, so the argmax of z estimates the balanced (not the long-tailed) posterior.

The ``paper`` preset follows ``dataset_mappings``: SGD 0.1 (momentum 0.9, Nesterov), batch 128 with
the last partial batch dropped, L2 1e-4 on kernels (= weight decay 2e-4, not on BatchNorm), a linear
warmup then x0.1 steps: CIFAR-10-LT 1241 epochs (warmup 20, steps at 604, 926, 1128), CIFAR-100-LT
1419 (warmup 22, steps at 691, 1059, 1290). Deviations: the backbone is ltbench's LDAM-style
ResNet-32 (the official Keras ResNet-32 has bottleneck blocks with projection shortcuts), and the
warmup is ltbench's ``lr (t + 1) / warmup`` (per step) rather than ``lr t / warmup``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ltbench.losses import BalancedCE
from ltbench.method import DataInfo
from ltbench.precision import official_precision
from ltbench.registry import register_method

from .ce import CPU_FMNIST, OneBackbone
from .ce import CrossEntropy as _CE


def _menon_cifar(epochs: int, warmup: int, milestones: list[int]) -> dict:
    # logit_adjustment/utils.py dataset_mappings + main.py optimizer
    return {
        "model": {"arch": "resnet32"},
        "method": {"tau": 1.0},
        "stages": {
            "train": {
                "epochs": epochs,
                "batch_size": 128,
                "drop_last": True,
                "augment": ["pad_crop_flip"],
                "optim": {
                    "name": "sgd",
                    "lr": 0.1,
                    "momentum": 0.9,
                    "nesterov": True,
                    "weight_decay": 2e-4,
                    "no_decay_1d": True,
                },
                "schedule": {
                    "name": "step",
                    "per": "step",
                    "warmup_epochs": warmup,
                    "milestones": milestones,
                    "gamma": 0.1,
                },
            }
        },
    }


@dataclass
class LAParams:
    tau: float = 1.0  # scale of the log-prior offset


@register_method("la")
class LogitAdjusted(OneBackbone):
    """Logit-adjusted cross-entropy on one backbone (the `ce` baseline with the prior offset)."""

    Params = LAParams
    defaults = _CE.defaults
    presets = {
        # CIFAR recipes: official runs on one GPU (batch 128 per BatchNorm); several GPUs: train.sync_bn=true
        "paper": {
            "cifar10_lt": _menon_cifar(1241, 20, [604, 926, 1128]),
            "cifar100_lt": _menon_cifar(1419, 22, [691, 1059, 1290]),
        },
        "cpu": {"fmnist_lt": CPU_FMNIST},  # `ce`'s cpu recipe, unchanged
        "cpu_ride": _CE.presets["cpu_ride"],  # beside ride, mdcs and shike: their ResNet-32 and schedule
        "cpu_vit": _CE.presets["cpu_vit"],  # beside livt and deit_lt: their small ViT
        # the full board: `ce`'s full rows with the prior offset (LDAM-DRW's CIFAR schedule, and each method's)
        "full": _CE.presets["full"],
        "full_ride": _CE.presets["full_ride"],
        "full_mdcs": _CE.presets["full_mdcs"],
        "full_shike": _CE.presets["full_shike"],
        "full_bal_softmax": _CE.presets["full_bal_softmax"],
        "full_paco": _CE.presets["full_paco"],
        "full_livt": _CE.presets["full_livt"],
        "full_deit_lt": _CE.presets["full_deit_lt"],
        "smoke": _CE.presets["smoke"],
    }

    def build_criterion(self, info: DataInfo) -> nn.Module:
        return BalancedCE(info.train_counts, self.hp.tau)


# precision of the official code, training and evaluation: google-research logit_adjustment/main.py
# (TensorFlow, float32 Keras model, no mixed-precision policy)
official_precision(LogitAdjusted.presets, "fp32")
