"""ImageNet-style ResNets (He et al. 2016) from torchvision, registered by name for methods that
train one plain network (LDAM-DRW's ResNet-50 teachers on ImageNet-LT and iNaturalist).

torchvision's initialisation is the official codes' own (convolutions Kaiming-normal with fan-out,
BatchNorm weight 1 and bias 0); ``in_chans`` other than 3 replaces the stem convolution. The
classifier is ``fc`` and its input width ``num_features``, as in the CIFAR ResNets.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models.resnet import ResNet

from ..registry import register_model
from .heads import fp32_head


@register_model("resnet50")
def resnet50(num_classes: int, in_chans: int = 3) -> ResNet:
    """torchvision ResNet-50 (Bottleneck, 3-4-6-3), randomly initialised."""
    net = tv_resnet50(num_classes=num_classes)
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    fp32_head(net.fc)  # fp32 under autocast
    net.num_features = net.fc.in_features
    return net
