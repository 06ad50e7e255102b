"""ImageNet-style ResNets (He et al. 2016) and ResNeXts (Xie et al. 2017) from torchvision,
registered by name for methods that train one plain network (LDAM-DRW's ResNet-50 teachers on
ImageNet-LT and iNaturalist, PaCo's ResNet-50 and ResNeXt-50 encoders).

torchvision's initialisation is the official codes' own (convolutions Kaiming-normal with fan-out,
BatchNorm weight 1 and bias 0, the classifier PyTorch's default); ``in_chans`` other than 3
replaces the stem convolution. The classifier is ``fc`` and its input width ``num_features``, as in
the CIFAR ResNets.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models import resnext50_32x4d as tv_resnext50_32x4d
from torchvision.models.resnet import ResNet

from ..registry import register_model
from .heads import fp32_head


def _adapted(net: ResNet, in_chans: int) -> ResNet:
    """``net`` with a stem for ``in_chans`` channels, its classifier in fp32 under autocast, and
    ``num_features`` set."""
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    fp32_head(net.fc)
    net.num_features = net.fc.in_features
    return net


@register_model("resnet50")
def resnet50(num_classes: int, in_chans: int = 3) -> ResNet:
    """torchvision ResNet-50 (Bottleneck, 3-4-6-3), randomly initialised."""
    return _adapted(tv_resnet50(num_classes=num_classes), in_chans)


@register_model("resnext50")
def resnext50(num_classes: int, in_chans: int = 3) -> ResNet:
    """torchvision ResNeXt-50 32x4d (Bottleneck, 3-4-6-3, 32 groups of width 4), randomly
    initialised: the ``resnext50_32x4d`` that PaCo's ``paco_lt.py`` takes from torchvision."""
    return _adapted(tv_resnext50_32x4d(num_classes=num_classes), in_chans)
