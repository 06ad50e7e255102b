"""Classifier heads shared by several methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NormedLinear(nn.Module):
    """Cosine classifier: ``scale * normalize(x) @ normalize(W)``, columns of W unit-norm.

    The weight is [in_features, num_classes] and initialised as in LDAM-DRW / RIDE:
    ``uniform(-1, 1)``, then every column renormalised to norm 1 (``renorm_(2, 1, 1e-5).mul_(1e5)``).
    RIDE, SHIKE and MDCS use ``scale = 30``.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(in_features, num_classes))
        with torch.no_grad():
            self.weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))
