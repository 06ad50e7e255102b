"""LWS, learnable weight scaling (Kang et al., ICLR 2020, Sec. 4): keep a finished `ce` run's
representation and classifier, and learn one scale per class with class-balanced sampling.

Reference: facebookresearch/classifier-balancing, ``config/ImageNet_LT/cls_lws.yaml`` and
``models/TauNormClassifier.py`` (see :mod:`ltbench.methods.decoupling` for what the three decoupled
methods share).

- **Classifier**: the `ce` run's ``fc`` (weights and bias, loaded from stage 1, frozen) times a
  learnable f_i per class, initialised to 1: z_i = f_i (w_i^T x + b_i) (Sec. 4, LWS).
- **Training**: the scales alone, softmax cross-entropy, class-balanced sampling; the backbone is
  frozen with BatchNorm in train mode, as in the official code.

The official code has no CIFAR recipe; the ``paper`` presets put ``cls_lws.yaml``'s stage (5 epochs,
batch 512, SGD 0.2, weight decay 5e-4, cosine to 0) on the ``ce --preset paper`` representation.
Deviations as for :mod:`ltbench.methods.crt` (first cosine epoch, last-epoch evaluation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.data import Batch
from ltbench.method import StepContext
from ltbench.precision import official_precision
from ltbench.registry import register_method

from .ce import CPU_FMNIST, LDAM_DRW_CIFAR
from .decoupling import Decoupled, classifier_stage


@register_method("lws")
class LearnableWeightScaling(Decoupled):
    """LWS: a `ce` run's frozen network with one learnable scale per class, trained class-balanced."""

    stage_names = ("lws",)

    def __init__(self, cfg, info, teachers=None) -> None:
        super().__init__(cfg, info, teachers)
        self.scales = nn.Parameter(torch.ones(info.num_classes))  # f_i, initialised to 1

    def logits(self, x: Tensor) -> Tensor:
        return self.net(x) * self.scales  # z_i = f_i (w_i^T x + b_i)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(self.logits(batch.x), batch.y)}

    def predict(self, x: Tensor) -> Tensor:
        return self.logits(x)


# cls_lws.yaml's stage (5 epochs, batch 512, lr 0.2) on ResNet-32: the CIFAR `paper` recipe and the full
# board's (on `ce --preset full`'s representation); cpu: 5 epochs at batch 128 and the linearly scaled
# lr 0.05 (not tuned) on `ce --preset cpu`'s ResNet-8; smoke: 2 epochs
PAPER = {"model": LDAM_DRW_CIFAR["model"], "stages": {"lws": classifier_stage(5, 512, 0.2)}}
LearnableWeightScaling.defaults = PAPER
LearnableWeightScaling.presets = {
    "paper": {"cifar10_lt": PAPER, "cifar100_lt": PAPER},
    "cpu": {"fmnist_lt": {"model": CPU_FMNIST["model"], "stages": {"lws": classifier_stage(5, 128, 0.05)}}},
    "full": {"fmnist_lt": PAPER},
    "smoke": {"*": {"stages": {"lws": classifier_stage(2, 32, 0.05)}}},
}

# precision of the official code, training and evaluation: facebookresearch/classifier-balancing
# run_networks.py has no autocast (fp32)
official_precision(LearnableWeightScaling.presets, "fp32")
