"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2) as in LDAM-DRW's ``resnet_cifar.py``.

ResNet-32 = a 3x3 stem with 16 channels and three stages of 5 BasicBlocks (16, 32, 64 channels,
strides 1, 2, 2), global average pooling and a linear classifier; Kaiming-normal initialisation of
convolutions and linear layers. Shortcut option ``"A"`` (parameter-free: subsample and zero-pad
channels) is the LDAM / RIDE / MDCS choice, ``"B"`` (1x1 conv + BN projection) SHIKE's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_model
from .heads import FP32Linear


def kaiming_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


class PadShortcut(nn.Module):
    """Option A: take every other pixel and zero-pad the new channels equally on both sides."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.pad = (planes - in_planes) // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_planes, planes)
            elif shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stage(in_planes: int, planes: int, blocks: int, stride: int, shortcut: str = "A") -> nn.Sequential:
    """``blocks`` BasicBlocks, the first with ``stride``: one stage of a CIFAR ResNet."""
    layers = [BasicBlock(in_planes, planes, stride, shortcut)]
    layers += [BasicBlock(planes, planes, 1, shortcut) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Stem(nn.Module):
    """3x3 convolution + BN + ReLU."""

    def __init__(self, in_chans: int, planes: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, planes, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(planes)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class ResNetCifar(nn.Module):
    """Stem, three stages, global average pooling and a classifier (``fc``)."""

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        blocks: int = 5,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        self.stem = Stem(in_chans, widths[0])
        self.layer1 = make_stage(widths[0], widths[0], blocks, 1, shortcut)
        self.layer2 = make_stage(widths[0], widths[1], blocks, 2, shortcut)
        self.layer3 = make_stage(widths[1], widths[2], blocks, 2, shortcut)
        self.num_features = widths[2]
        self.fc = FP32Linear(widths[2], num_classes)  # fp32 under autocast
        self.apply(kaiming_init)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


@register_model("resnet32")
def resnet32(num_classes: int, in_chans: int = 3) -> ResNetCifar:
    """CIFAR ResNet-32 (3 x 5 BasicBlocks, 16/32/64 channels, option-A shortcuts)."""
    return ResNetCifar(num_classes, in_chans, blocks=5)


@register_model("resnet8")
def resnet8(num_classes: int, in_chans: int = 3) -> ResNetCifar:
    """CIFAR ResNet-8 (3 x 1 BasicBlock, 16/32/64 channels, option-A shortcuts): the cpu presets'
    backbone, 4.4x the training throughput of ResNet-32 on 28 px images on one CPU thread."""
    return ResNetCifar(num_classes, in_chans, blocks=1)
