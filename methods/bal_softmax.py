"""Balanced Softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
NeurIPS 2020): softmax cross-entropy on z + log n_c, the loss alone (no meta sampler).

Reference: the official code, jiawei-ren/BalancedMetaSoftmax-Classification
(``loss/BalancedSoftmaxLoss.py``, ``config/CIFAR*_LT/balanced_softmax_imba200.yaml``,
``utils.CosineAnnealingLRWarmup``, ``data/ImbalanceCIFAR.py``).

- **Loss**: L = -log(n_y e^{z_y} / sum_j n_j e^{z_j}) (Eq. 4), i.e. :class:`~ltbench.losses.BalancedCE`
  with tau = 1, the one implementation of the logit-adjusted cross-entropy: log pi_c differs from
  the official log n_c by a constant that softmax ignores.
- **Model and prediction**: the plain backbone of `ce` and its raw logits (the softmax
  without the prior estimates the balanced posterior).

The ``paper`` presets follow ``balanced_softmax_imba200.yaml`` on the official IF 200 data:
ResNet-32, batch 512, SGD (momentum 0.9, weight decay 5e-4), 13,000 iterations and an 800-iteration
warmup counted in epochs as ``run_networks.py`` does (``ceil(iterations / batches per epoch)``:
591 / 37 epochs on CIFAR-10-LT, 685 / 43 on CIFAR-100-LT), lr rising linearly from 0.05 to 0.1 then
cosine to 0 per epoch, RandomCrop + flip + CIFAR AutoAugment + Cutout, ``int(N / 512)`` batches an
epoch (the last partial batch dropped). Deviation: the official code keeps the epoch with the best
val accuracy, and its CIFAR val loader is the test set; ltbench evaluates the last epoch.
"""

from __future__ import annotations

from torch import nn

from ltbench.losses import BalancedCE
from ltbench.method import DataInfo
from ltbench.precision import official_precision
from ltbench.recipes import overlay, sgd
from ltbench.registry import register_method

from .ce import CPU_FMNIST, OneBackbone
from .ce import CrossEntropy as _CE


def _balms_cifar(epochs: int, warmup: int) -> dict:
    """The training recipe of ``balanced_softmax_imba200.yaml`` (the data's imbalance apart)."""
    return {
        "model": {"arch": "resnet32"},
        "stages": {
            "train": {
                "epochs": epochs,
                "batch_size": 512,
                "drop_last": True,
                "augment": ["autoaug_cutout"],
                "optim": sgd(lr=0.1, weight_decay=5e-4, nesterov=False),
                "schedule": {"name": "cosine", "per": "epoch", "warmup_epochs": warmup, "warmup_from": 0.5},
            }
        },
    }


IMBA200 = {"imb_factor": 200.0}  # cifar_imb_ratio: 200, the official CIFAR data; not fmnist_lt's
CIFAR100 = _balms_cifar(685, 43)


@register_method("bal_softmax")
class BalancedSoftmax(OneBackbone):
    """Balanced Softmax: cross-entropy on logits + log n_c, one backbone, raw logits at test time."""

    defaults = _CE.defaults
    presets = {
        "paper": {
            "cifar10_lt": overlay(_balms_cifar(591, 37), data=IMBA200),
            "cifar100_lt": overlay(CIFAR100, data=IMBA200),
        },
        "cpu": {"fmnist_lt": CPU_FMNIST},  # `ce`'s cpu recipe, unchanged
        # the full board: CIFAR-100-LT's recipe at its epoch counts on fmnist_lt's own data, compared with
        # `ce --preset full_bal_softmax` (the official code would derive 2,600 epochs from 13,000
        # iterations at fmnist_lt's 5 batches an epoch; the board keeps every method's CIFAR epochs)
        "full": {"fmnist_lt": CIFAR100},
        "smoke": _CE.presets["smoke"],
    }

    def build_criterion(self, info: DataInfo) -> nn.Module:
        return BalancedCE(info.train_counts, tau=1.0)  # Eq. 4: -log n_y e^{z_y} / sum_j n_j e^{z_j}


# precision of the official code, training and evaluation: BalancedMetaSoftmax-Classification
# run_networks.py has no autocast (fp32)
official_precision(BalancedSoftmax.presets, "fp32")
