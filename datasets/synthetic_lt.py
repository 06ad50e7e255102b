"""A small generated long-tailed dataset: learnable in seconds, for tests and smoke runs.

Each class has a random low-frequency colour pattern (a 4x4 grid upsampled to the image size);
an image is its class pattern plus per-pixel Gaussian noise and a random brightness shift. Train
counts follow the exponential profile; val and test are balanced. Everything is drawn from
``data.seed``, so the dataset is identical on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ltbench.config import DataConfig, limits
from ltbench.data import LTData, LTDataset, TensorSplit, exponential_profile, fingerprint
from ltbench.registry import register_dataset


@dataclass
class SyntheticLTParams(DataConfig):
    num_classes: int = field(default=10, metadata=limits(2))
    img_max: int = field(default=100, metadata=limits(1))
    imb_factor: float = field(default=10.0, metadata=limits(1))
    image_size: int = field(default=16, metadata=limits(1))
    channels: int = field(default=3, metadata=limits(1))
    noise: float = field(default=25.0, metadata=limits(0))  # std of the pixel noise, in uint8 units
    val_per_class: int = field(default=10, metadata=limits(0))
    test_per_class: int = field(default=20, metadata=limits(1))


def _images(patterns: torch.Tensor, labels: np.ndarray, noise: float, gen: torch.Generator) -> torch.Tensor:
    base = patterns[torch.from_numpy(labels)]
    shift = torch.randn(len(labels), 1, 1, 1, generator=gen) * 10
    pixels = base + shift + torch.randn(base.shape, generator=gen) * noise
    return pixels.clamp_(0, 255).round_().to(torch.uint8)


@register_dataset("synthetic_lt")
class SyntheticLT(LTDataset):
    """Generated long-tailed images (10 classes, 16x16 RGB by default) for fast tests."""

    Params = SyntheticLTParams

    def build(self, params: SyntheticLTParams) -> LTData:
        gen = torch.Generator().manual_seed(params.seed)
        c, size = params.num_classes, params.image_size
        grid = torch.rand(c, params.channels, 4, 4, generator=gen) * 255
        patterns = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
        counts = exponential_profile(params.img_max, params.imb_factor, c)
        train_y = np.repeat(np.arange(c), counts)
        val_y = np.repeat(np.arange(c), params.val_per_class)
        test_y = np.repeat(np.arange(c), params.test_per_class)
        train = TensorSplit(_images(patterns, train_y, params.noise, gen), train_y)
        val = TensorSplit(_images(patterns, val_y, params.noise, gen), val_y)
        test = TensorSplit(_images(patterns, test_y, params.noise, gen), test_y)
        return LTData(
            name="synthetic_lt",
            num_classes=c,
            in_chans=params.channels,
            image_size=size,
            mean=(0.5,) * params.channels,
            std=(0.25,) * params.channels,
            train=train,
            val=val if params.val_per_class else None,
            test=test,
            fingerprint=fingerprint(
                np.asarray(counts), np.asarray([params.seed, size, params.channels, int(params.noise * 1000)])
            ),
            details={"generator": "synthetic_lt", "data_seed": params.seed},
        )
