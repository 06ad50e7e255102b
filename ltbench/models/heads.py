"""Classifier heads shared by several methods, computed in fp32 whatever the autocast dtype.

Under fp16 autocast a scale-30 cosine logit moves in steps of 0.0156 near +-30 (bf16: 8x
coarser), which is the size of the LDAM margins and logit-adjustment offsets added to it; so the
heads leave autocast, take their input as fp32 and return fp32 logits, and every loss term built
on those logits (margins, re-weighting, offsets, soft targets) stays fp32 by type promotion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _no_autocast(x: Tensor) -> torch.autocast:
    return torch.autocast(x.device.type, enabled=False)


class FP32Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) that computes in fp32 under autocast."""

    def forward(self, x: Tensor) -> Tensor:
        with _no_autocast(x):
            return F.linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())


def fp32_head(head: nn.Module) -> nn.Module:
    """Make an existing ``nn.Linear`` (a timm model's ``head``) an :class:`FP32Linear` in place;
    anything else (timm's ``Identity`` without classes) is left as it is."""
    if type(head) is nn.Linear:
        head.__class__ = FP32Linear
    return head


class NormedLinear(nn.Module):
    """Cosine classifier: ``scale * normalize(x) @ normalize(W)``, columns of W unit-norm.

    The weight is [in_features, num_classes] and initialised as in LDAM-DRW / RIDE:
    ``uniform(-1, 1)``, then every column renormalised to norm 1 (``renorm_(2, 1, 1e-5).mul_(1e5)``).
    RIDE, SHIKE and MDCS use ``scale = 30``. Computed in fp32 under autocast.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(in_features, num_classes))
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: Tensor) -> Tensor:
        with _no_autocast(x):
            return self.scale * F.normalize(x.float(), dim=1).mm(F.normalize(self.weight.float(), dim=0))
