"""cRT, classifier re-training (Kang et al., ICLR 2020, Sec. 4): keep the representation of a
finished `ce` run, re-initialise the linear classifier and train it alone with class-balanced
sampling.

Reference: facebookresearch/classifier-balancing, ``config/ImageNet_LT/cls_crt.yaml`` (see
:mod:`ltbench.methods.decoupling` for what the three decoupled methods share).

- **Representation**: the `ce` run's backbone, frozen (BatchNorm statistics still updated, as
  the official ``train()`` mode does).
- **Classifier**: a new ``nn.Linear`` with PyTorch's default initialisation (``load_model`` skips
  the ``DotProductClassifier`` weights of stage 1), trained with softmax cross-entropy.
- **Sampling**: class-balanced, p_j = 1/C (Eq. 1 with q = 0), by the official class-aware
  sampler (``class_aware``: shuffled class cycle, 4 images per visit).

The official code has no CIFAR recipe; the ``paper`` presets put ``cls_crt.yaml``'s classifier
stage (10 epochs, batch 512, SGD 0.2, weight decay 5e-4, cosine to 0) on the ``ce --preset paper``
representation of CIFAR-10/100-LT. Deviations: the official scheduler steps before the first
epoch (its first epoch runs at cos(pi / 10)), ltbench's cosine starts at the full lr; the
official code keeps the epoch with the best val accuracy, ltbench evaluates the last.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.data import Batch
from ltbench.method import StepContext
from ltbench.precision import official_precision
from ltbench.registry import register_method

from .ce import CPU_FMNIST, LDAM_DRW_CIFAR
from .decoupling import Decoupled, classifier_stage


@register_method("crt")
class ClassifierRetraining(Decoupled):
    """cRT: a `ce` run's frozen representation, a new linear classifier trained class-balanced."""

    stage_names = ("crt",)

    def __init__(self, cfg, info, teachers=None) -> None:
        super().__init__(cfg, info, teachers)
        self.net.fc = nn.Linear(self.net.num_features, info.num_classes)  # re-initialised, trainable

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        return {"loss": F.cross_entropy(self.net(batch.x), batch.y)}  # Eq. 1 sampling, q = 0

    def predict(self, x: Tensor) -> Tensor:
        return self.net(x)


# cls_crt.yaml's classifier stage (10 epochs, batch 512, lr 0.2) on ResNet-32: the CIFAR `paper` recipe
# and the full board's (on `ce --preset full`'s representation); cpu: 10 epochs at batch 128 and the
# linearly scaled lr 0.05 (not tuned) on `ce --preset cpu`'s ResNet-8; smoke: 2 epochs
PAPER = {"model": LDAM_DRW_CIFAR["model"], "stages": {"crt": classifier_stage(10, 512, 0.2)}}
ClassifierRetraining.defaults = PAPER
ClassifierRetraining.presets = {
    "paper": {"cifar10_lt": PAPER, "cifar100_lt": PAPER},
    "cpu": {"fmnist_lt": {"model": CPU_FMNIST["model"], "stages": {"crt": classifier_stage(10, 128, 0.05)}}},
    "full": {"fmnist_lt": PAPER},
    "smoke": {"*": {"stages": {"crt": classifier_stage(2, 32, 0.05)}}},
}

# precision of the official code, training and evaluation: facebookresearch/classifier-balancing
# run_networks.py has no autocast (fp32)
official_precision(ClassifierRetraining.presets, "fp32")
