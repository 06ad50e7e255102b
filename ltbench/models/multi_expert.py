"""Multi-expert ResNets: one shared trunk, then per-expert tails and classifiers (RIDE, Wang et al.
ICLR 2021; MDCS reuses them unchanged).

Sharing the early layers keeps the cost of E experts well below E networks, while the later
layers, which decide the classes, are separate so the experts can disagree. As in the official
code (frank-xwang/RIDE-LongTailRecognition, ``ride_resnet_cifar.py``, ``RIDEResNet.py``,
``RIDEResNeXt.py``):

- CIFAR ResNet-32: stem + ``layer1`` (16 channels) shared; per expert ``layer2`` and ``layer3``
  (5 BasicBlocks each, 1 in the cpu presets' ResNet-8; stride 2, option-A shortcuts), 24 / 48
  channels with ``reduce_dimension`` (else 32 / 64); Kaiming-normal initialisation of convolutions
  and linear layers.
- ImageNet ResNet-10 / ResNet-50 / ResNeXt-50 (32x4d) / ResNet-152: conv 7x7, BN, max-pool, ``layer1``,
  ``layer2`` shared; per expert ``layer3`` and ``layer4`` with 192 / 384 planes when reduced (else
  256 / 512); convolutions normal(0, sqrt(2 / (k*k*out))), BN weight 1 and bias 0, default
  ``nn.Linear`` initialisation.
- Each expert ends in global average pooling and its own classifier: the cosine classifier
  :class:`~ltbench.models.heads.NormedLinear` with scale s (``use_norm``, s = 30 in RIDE) or a
  plain ``nn.Linear`` (the official s = 1 without ``use_norm``).

MDCS (fistyee/MDCS, ``model/fb_resnets/Expert_ResNet.py`` with ``share_layer3=false``) trains a
ResNet-152 of this layout without width reduction on Places-LT, starting from an ImageNet-pretrained
single ResNet-152 whose layer3 / layer4 are copied into every expert (:func:`load_resnet_weights`).

SHIKE's variant (:class:`DepthFusionNet`, official jinyan-06/SHIKE ``networks.py``) shares one more
stage (CIFAR: stem, ``layer1``, ``layer2``; per expert a full-width ``layer3`` with option-B
shortcuts), fuses each expert's output with a downsampled shallow feature (depth-wise knowledge
fusion) and carries a second set of cosine heads for classifier re-training.

The official ImageNet models pool with ``AvgPool2d(7)``, which is global pooling at 224 px; global
pooling is used here so other image sizes work too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock as ImageNetBasicBlock
from torchvision.models.resnet import Bottleneck

from ..registry import register_model
from .heads import FP32Linear, NormedLinear
from .resnet_cifar import Stem, kaiming_init, make_stage


class ExpertOutputs(NamedTuple):
    """Per-expert logits ``[B, E, C]`` and pooled features ``[B, E, D]``."""

    logits: Tensor
    features: Tensor

    @property
    def mean_logits(self) -> Tensor:
        """The ensemble prediction without routing: the mean of the expert logits."""
        return self.logits.mean(1)


class MultiExpertNet(nn.Module):
    """A shared ``trunk``, E expert ``tails`` and E classifier ``heads``.

    ``forward`` runs every expert; ``forward_trunk`` and ``forward_expert`` let a caller run
    experts one at a time on a subset of the batch (test-time routing).
    """

    def __init__(
        self,
        trunk: nn.Module,
        tails: list[nn.Module],
        num_features: int,
        num_classes: int,
        use_norm: bool,
        scale: float,
        weight_init: Callable[[nn.Module], None],
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.tails = nn.ModuleList(tails)
        self.heads = nn.ModuleList(
            NormedLinear(num_features, num_classes, scale) if use_norm else FP32Linear(num_features, num_classes)
            for _ in tails
        )
        self.num_features = num_features
        self.num_classes = num_classes
        self._weight_init = weight_init
        self.apply(weight_init)

    @property
    def num_experts(self) -> int:
        return len(self.tails)

    def init_weights(self, module: nn.Module) -> None:
        """Initialise a module added later (e.g. a router) the way this backbone family
        initialises its own layers, as the official models do for every layer they hold."""
        module.apply(self._weight_init)

    def forward_trunk(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def forward_expert(self, shared: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Expert ``k`` on trunk output ``shared``: (logits [B, C], pooled feature [B, D])."""
        feature = F.adaptive_avg_pool2d(self.tails[k](shared), 1).flatten(1)
        return self.heads[k](feature), feature

    def forward(self, x: Tensor) -> ExpertOutputs:
        shared = self.forward_trunk(x)
        logits, features = zip(*(self.forward_expert(shared, k) for k in range(self.num_experts)))
        return ExpertOutputs(torch.stack(logits, 1), torch.stack(features, 1))


# ----------------------------------------------------------------------------- CIFAR ResNet-32


def cifar_experts(
    blocks: int, num_classes: int, in_chans: int, num_experts: int, reduce_dimension: bool, use_norm: bool, scale: float
) -> MultiExpertNet:
    """CIFAR ResNet-(6n+2), n = ``blocks``: a shared stem + first stage, per-expert second and
    third stages."""
    w2, w3 = (24, 48) if reduce_dimension else (32, 64)
    trunk = nn.Sequential(Stem(in_chans, 16), make_stage(16, 16, blocks, 1))
    tails = [nn.Sequential(make_stage(16, w2, blocks, 2), make_stage(w2, w3, blocks, 2)) for _ in range(num_experts)]
    return MultiExpertNet(trunk, tails, w3, num_classes, use_norm, scale, kaiming_init)


@register_model("resnet32_experts")
def resnet32_experts(
    num_classes: int,
    in_chans: int = 3,
    num_experts: int = 3,
    reduce_dimension: bool = True,
    use_norm: bool = True,
    scale: float = 30.0,
) -> MultiExpertNet:
    """The official CIFAR backbone: ResNet-32 (5 BasicBlocks per stage) with experts."""
    return cifar_experts(5, num_classes, in_chans, num_experts, reduce_dimension, use_norm, scale)


@register_model("resnet8_experts")
def resnet8_experts(
    num_classes: int,
    in_chans: int = 3,
    num_experts: int = 3,
    reduce_dimension: bool = True,
    use_norm: bool = True,
    scale: float = 30.0,
) -> MultiExpertNet:
    """ResNet-8 (1 BasicBlock per stage) with experts: the cpu presets' budget backbone."""
    return cifar_experts(1, num_classes, in_chans, num_experts, reduce_dimension, use_norm, scale)


# ----------------------------------------------------------------------------- ImageNet ResNets

ImageNetBlock = type[ImageNetBasicBlock] | type[Bottleneck]


def imagenet_init(module: nn.Module) -> None:
    """normal(0, sqrt(2 / (k*k*out))) = Kaiming-normal with fan-out; BN weight 1, bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def imagenet_stem(in_chans: int) -> list[nn.Module]:
    """conv 7x7 / 2 (64 channels), BN, ReLU, max-pool 3x3 / 2: the ImageNet ResNet stem."""
    return [
        nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]


def resnet_stage(
    block: ImageNetBlock, inplanes: int, planes: int, blocks: int, stride: int, groups: int = 1, base_width: int = 64
) -> nn.Sequential:
    """One torchvision-style stage; a 1x1 conv + BN projection when the shape changes."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, stride, downsample, groups, base_width)]
    layers += [block(out, planes, groups=groups, base_width=base_width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def imagenet_experts(
    block: ImageNetBlock,
    layers: tuple[int, int, int, int],
    num_classes: int,
    in_chans: int,
    num_experts: int,
    reduce_dimension: bool,
    use_norm: bool,
    scale: float,
    groups: int = 1,
    base_width: int = 64,
) -> MultiExpertNet:
    """Shared conv1 / max-pool / layer1 / layer2; per-expert layer3 and layer4."""
    p3, p4 = (192, 384) if reduce_dimension else (256, 512)
    e = block.expansion
    trunk = nn.Sequential(
        *imagenet_stem(in_chans),
        resnet_stage(block, 64, 64, layers[0], 1, groups, base_width),
        resnet_stage(block, 64 * e, 128, layers[1], 2, groups, base_width),
    )
    tails = [
        nn.Sequential(
            resnet_stage(block, 128 * e, p3, layers[2], 2, groups, base_width),
            resnet_stage(block, p3 * e, p4, layers[3], 2, groups, base_width),
        )
        for _ in range(num_experts)
    ]
    return MultiExpertNet(trunk, tails, p4 * e, num_classes, use_norm, scale, imagenet_init)


@register_model("resnet10_experts")
def resnet10_experts(
    num_classes: int,
    in_chans: int = 3,
    num_experts: int = 3,
    reduce_dimension: bool = True,
    use_norm: bool = True,
    scale: float = 30.0,
) -> MultiExpertNet:
    """ImageNet ResNet-10 (one BasicBlock per stage) with per-expert layer3 / layer4."""
    return imagenet_experts(
        ImageNetBasicBlock, (1, 1, 1, 1), num_classes, in_chans, num_experts, reduce_dimension, use_norm, scale
    )


@register_model("resnet50_experts")
def resnet50_experts(
    num_classes: int,
    in_chans: int = 3,
    num_experts: int = 3,
    reduce_dimension: bool = True,
    use_norm: bool = True,
    scale: float = 30.0,
) -> MultiExpertNet:
    """ImageNet ResNet-50 with per-expert layer3 / layer4."""
    return imagenet_experts(
        Bottleneck, (3, 4, 6, 3), num_classes, in_chans, num_experts, reduce_dimension, use_norm, scale
    )


@register_model("resnext50_experts")
def resnext50_experts(
    num_classes: int,
    in_chans: int = 3,
    num_experts: int = 3,
    reduce_dimension: bool = True,
    use_norm: bool = True,
    scale: float = 30.0,
) -> MultiExpertNet:
    """ImageNet ResNeXt-50 (32x4d) with per-expert layer3 / layer4."""
    return imagenet_experts(
        Bottleneck,
        (3, 4, 6, 3),
        num_classes,
        in_chans,
        num_experts,
        reduce_dimension,
        use_norm,
        scale,
        groups=32,
        base_width=4,
    )


@register_model("resnet152_experts")
def resnet152_experts(
    num_classes: int,
    in_chans: int = 3,
    num_experts: int = 3,
    reduce_dimension: bool = False,
    use_norm: bool = True,
    scale: float = 30.0,
) -> MultiExpertNet:
    """ImageNet ResNet-152 with per-expert layer3 / layer4, full widths by default (MDCS Places-LT)."""
    return imagenet_experts(
        Bottleneck, (3, 8, 36, 3), num_classes, in_chans, num_experts, reduce_dimension, use_norm, scale
    )


def _torchvision_name(name: str) -> str | None:
    """The torchvision ResNet parameter name of a trunk / tail parameter of an ImageNet-family
    :class:`MultiExpertNet` (``trunk.0`` = conv1, ``trunk.1`` = bn1, ``trunk.4/5`` = layer1/2,
    ``tails.k.0/1`` = layer3/4 of every expert k); None for the classifier heads."""
    parts = name.split(".")
    if parts[0] == "trunk":
        prefix = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2"}[parts[1]]
        return ".".join([prefix, *parts[2:]])
    if parts[0] == "tails":
        return ".".join([("layer3", "layer4")[int(parts[2])], *parts[3:]])
    return None


def load_resnet_weights(net: MultiExpertNet, state_dict: dict[str, Tensor]) -> list[str]:
    """Initialise an ImageNet-family multi-expert net from a single torchvision-layout ResNet
    ``state_dict`` (``conv1``, ``bn1``, ``layer1`` ... ``layer4``; a ``module.`` prefix is dropped):
    the shared trunk from conv1 / bn1 / layer1 / layer2, and every expert's tail from the same
    layer3 / layer4, as the official MDCS ``init_weights(..., caffe=True)`` does for Places-LT.
    BatchNorm step counters and the classifier heads keep their own values. Returns the names of
    this net's parameters and buffers that were loaded; raises ``KeyError`` naming a missing one and
    ``ValueError`` on a shape mismatch."""
    source = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = net.state_dict()
    loaded = {}
    for name, value in own.items():
        key = _torchvision_name(name)
        if key is None or name.endswith("num_batches_tracked"):
            continue
        if key not in source:
            raise KeyError(f"{key} (for {name}) is not in the checkpoint")
        if source[key].shape != value.shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(source[key].shape)} != model shape {tuple(value.shape)}")
        loaded[name] = source[key]
    net.load_state_dict({**own, **loaded})
    return sorted(loaded)


# ----------------------------------------------------------------------------- depth-wise knowledge fusion


def shallow_downsampler(in_planes: int, depth: int) -> nn.Sequential:
    """SHIKE's ``ShallowExpert``: ``depth`` strided stages, stage k a 3x3 conv (stride 2, padding 1,
    no bias) from ``in_planes * 2**k`` to ``in_planes * 2**(k+1)`` channels + BN, followed by a
    ReLU unless k == 1 (the official ``use_relu=(k != 1)``)."""
    layers: list[nn.Module] = []
    for k in range(depth):
        planes = in_planes * 2**k
        layers += [nn.Conv2d(planes, 2 * planes, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * planes)]
        if k != 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DepthFusionNet(MultiExpertNet):
    """SHIKE's multi-expert net with depth-wise knowledge fusion (DKF, Jin et al. CVPR 2023).

    ``trunk`` is a sequence: a stem, then S shared stages whose outputs have ``tap_widths``
    channels. As in the official ``ResNet_MoE`` (depth list ``[S, ..., 1]``), expert k taps the
    output of shared stage ``k % S + 1`` and brings it to the shape of its tail's output with
    :func:`shallow_downsampler` of depth ``S - k % S``; the two are multiplied element-wise, pooled
    globally and classified by a cosine classifier. On CIFAR (S = 2) experts 0 and 2 fuse the
    layer1 output, expert 1 the layer2 output.

    Two head sets: ``heads`` (stage 1) and ``rt_heads`` (classifier re-training). The
    downsamplers are created after the backbone's weight initialisation, so they keep PyTorch's
    default initialisation, as in the official code.
    """

    def __init__(
        self,
        trunk: nn.Sequential,
        tap_widths: list[int],
        tails: list[nn.Module],
        num_features: int,
        num_classes: int,
        scale: float,
        weight_init: Callable[[nn.Module], None],
    ) -> None:
        super().__init__(trunk, tails, num_features, num_classes, True, scale, weight_init)
        if len(trunk) != len(tap_widths) + 1:
            raise ValueError("the trunk must be a stem followed by one stage per tap width")
        shared = len(tap_widths)
        self.taps = [k % shared + 1 for k in range(len(tails))]  # index into the trunk's outputs
        depths = [shared - k % shared for k in range(len(tails))]
        self.shallow = nn.ModuleList(
            shallow_downsampler(tap_widths[t - 1], d) for t, d in zip(self.taps, depths, strict=True)
        )
        for t, d in zip(self.taps, depths, strict=True):
            if tap_widths[t - 1] * 2**d != num_features:
                raise ValueError(f"a shared stage of width {tap_widths[t - 1]} cannot be fused with {num_features}")
        self.rt_heads = nn.ModuleList(NormedLinear(num_features, num_classes, scale) for _ in tails)

    def forward_trunk(self, x: Tensor) -> list[Tensor]:
        """The outputs of the stem and of every shared stage."""
        outs = []
        for stage in self.trunk:
            x = stage(x)
            outs.append(x)
        return outs

    def expert_feature(self, shared: list[Tensor], k: int) -> Tensor:
        """Expert ``k``'s pooled DKF feature [B, D]: pool(tail_k(deepest) * shallow_k(tapped))."""
        fused = self.tails[k](shared[-1]) * self.shallow[k](shared[self.taps[k]])
        return F.adaptive_avg_pool2d(fused, 1).flatten(1)

    def forward_expert(self, shared: list[Tensor], k: int, retrained: bool = False) -> tuple[Tensor, Tensor]:
        feature = self.expert_feature(shared, k)
        heads = self.rt_heads if retrained else self.heads
        return heads[k](feature), feature

    def classify(self, features: Tensor, retrained: bool = False) -> Tensor:
        """Logits [B, E, C] of pooled features [B, E, D] from one head set."""
        heads = self.rt_heads if retrained else self.heads
        return torch.stack([head(f) for head, f in zip(heads, features.unbind(1), strict=True)], 1)

    def forward(self, x: Tensor, retrained: bool = False) -> ExpertOutputs:
        shared = self.forward_trunk(x)
        features = torch.stack([self.expert_feature(shared, k) for k in range(self.num_experts)], 1)
        return ExpertOutputs(self.classify(features, retrained), features)


def cifar_dkf_experts(blocks: int, num_classes: int, in_chans: int, num_experts: int, scale: float) -> DepthFusionNet:
    """SHIKE's CIFAR layout at ResNet-(6n+2), n = ``blocks``: option-B shortcuts, shared stem /
    layer1 / layer2, a full-width layer3 per expert, DKF and cosine classifiers."""
    trunk = nn.Sequential(Stem(in_chans, 16), make_stage(16, 16, blocks, 1, "B"), make_stage(16, 32, blocks, 2, "B"))
    tails = [make_stage(32, 64, blocks, 2, "B") for _ in range(num_experts)]
    return DepthFusionNet(trunk, [16, 32], tails, 64, num_classes, scale, kaiming_init)


@register_model("resnet32_dkf_experts")
def resnet32_dkf_experts(
    num_classes: int, in_chans: int = 3, num_experts: int = 3, scale: float = 30.0
) -> DepthFusionNet:
    """SHIKE's CIFAR ResNet-32 (``networks.resnet32(use_norm=True)``)."""
    return cifar_dkf_experts(5, num_classes, in_chans, num_experts, scale)


@register_model("resnet8_dkf_experts")
def resnet8_dkf_experts(
    num_classes: int, in_chans: int = 3, num_experts: int = 3, scale: float = 30.0
) -> DepthFusionNet:
    """SHIKE's CIFAR layout at ResNet-8: the cpu preset's budget backbone."""
    return cifar_dkf_experts(1, num_classes, in_chans, num_experts, scale)


@register_model("resnet50_dkf_experts")
def resnet50_dkf_experts(
    num_classes: int, in_chans: int = 3, num_experts: int = 3, scale: float = 30.0
) -> DepthFusionNet:
    """Not official (SHIKE released CIFAR only): ImageNet ResNet-50 with shared stem / layer1-3, a
    full-width layer4 per expert and DKF from layer1 / layer2 / layer3 by the official depth rule."""
    e = Bottleneck.expansion
    trunk = nn.Sequential(
        nn.Sequential(*imagenet_stem(in_chans)),
        resnet_stage(Bottleneck, 64, 64, 3, 1),
        resnet_stage(Bottleneck, 64 * e, 128, 4, 2),
        resnet_stage(Bottleneck, 128 * e, 256, 6, 2),
    )
    tails = [resnet_stage(Bottleneck, 256 * e, 512, 3, 2) for _ in range(num_experts)]
    return DepthFusionNet(trunk, [64 * e, 128 * e, 256 * e], tails, 512 * e, num_classes, scale, imagenet_init)
