"""Multi-expert ResNets (RIDE / MDCS backbones) and the MAC counter.

Parameter counts and compute are checked against numbers obtained by running the official code
(frank-xwang/RIDE-LongTailRecognition @ ab8be5c: ``model/model.py`` models, and ``utils/gflops.py``
with thop 0.1.1.post2209072238, the values quoted in ../shared/refs/ride.md) and against MACs
derived by hand from the layer shapes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ltbench.models import create_model
from ltbench.models.compute import MacCounter, conv_macs, count_macs, linear_macs
from ltbench.models.heads import NormedLinear
from ltbench.models.multi_expert import MultiExpertNet


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- architecture


@pytest.mark.parametrize(
    "arch, kwargs, official",
    [
        # sum of parameter numel of the official model's backbone, e.g.
        # ResNet32Model(num_classes=100, num_experts=3, reduce_dimension=True, use_norm=True).backbone
        ("resnet32_experts", dict(num_classes=100), 783_856),
        ("resnet32_experts", dict(num_classes=100, reduce_dimension=False, use_norm=False), 1_362_364),
        # ResNet-8: trunk 464 + 4,672; per expert 16->24 (8,736), 24->48 (31,296), cosine head 48*100
        ("resnet8_experts", dict(num_classes=100), 464 + 4672 + 3 * (8736 + 31296 + 4800)),
        ("resnet10_experts", dict(num_classes=1000), 9_401_792),
        ("resnet50_experts", dict(num_classes=1000), 43_677_248),
        ("resnext50_experts", dict(num_classes=1000), 42_889_024),
    ],
)
def test_parameter_counts_equal_the_official_models(arch, kwargs, official):
    assert n_params(create_model(arch, **kwargs)) == official


def test_cifar_layout_shared_trunk_and_reduced_expert_widths():
    net = create_model("resnet32_experts", num_classes=10, in_chans=1, num_experts=3)
    assert isinstance(net, MultiExpertNet) and net.num_experts == 3 and net.num_features == 48
    widths = [[stage[0].conv1.out_channels for stage in tail] for tail in net.tails]
    assert widths == [[24, 48]] * 3
    assert [len(stage) for stage in net.tails[0]] == [5, 5] and len(net.trunk[1]) == 5
    # option-A shortcuts: 16 -> 24 pads 4 channels each side, 24 -> 48 pads 12
    assert [net.tails[0][i][0].shortcut.pad for i in (0, 1)] == [4, 12]
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in net.modules())
    out = net(torch.randn(4, 1, 28, 28))
    assert out.logits.shape == (4, 3, 10) and out.features.shape == (4, 3, 48)
    assert torch.equal(out.mean_logits, out.logits.mean(1))
    assert all(isinstance(h, NormedLinear) and h.scale == 30.0 for h in net.heads)
    assert {id(p) for p in net.tails[0].parameters()}.isdisjoint({id(p) for p in net.tails[1].parameters()})


def test_imagenet_layout_192_384_planes_shared_through_layer2():
    net = create_model("resnet50_experts", num_classes=7, num_experts=2)
    assert net.num_features == 384 * 4
    layer3, layer4 = net.tails[0]
    assert (len(layer3), len(layer4)) == (6, 3)
    assert (layer3[0].conv1.out_channels, layer4[0].conv3.out_channels) == (192, 1536)
    assert layer3[0].conv2.stride == (2, 2)  # stride on the 3x3 convolution, as in the official Bottleneck
    assert net.trunk[5][0].conv3.out_channels == 512  # layer2 is shared
    rx = create_model("resnext50_experts", num_classes=7, num_experts=2)
    assert rx.tails[0][0][0].conv2.groups == 32 and rx.tails[0][0][0].conv2.out_channels == 32 * 4 * 192 // 64


def test_per_expert_forward_equals_rows_of_the_full_forward():
    torch.manual_seed(0)
    net = create_model("resnet32_experts", num_classes=5, num_experts=3).eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        full = net(x)
        shared = net.forward_trunk(x)
        subset = torch.tensor([4, 1])
        logits, feature = net.forward_expert(shared[subset], 2)
    torch.testing.assert_close(logits, full.logits[subset, 2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feature, full.features[subset, 2], rtol=1e-5, atol=1e-5)


def test_cosine_heads_give_30_times_the_cosine_and_linear_heads_are_unscaled():
    torch.manual_seed(0)
    net = create_model("resnet32_experts", num_classes=5, num_experts=2).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, 16, 16))
        w = net.heads[1].weight
        cos = nn.functional.cosine_similarity(out.features[:, 1, :, None], w[None], dim=1)
    torch.testing.assert_close(out.logits[:, 1], 30 * cos, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(w.norm(dim=0), torch.ones(5))  # unit columns at initialisation
    linear = create_model("resnet32_experts", num_classes=5, num_experts=2, use_norm=False)
    assert all(isinstance(h, nn.Linear) for h in linear.heads)  # plain (fp32) linear layers, no scale


def test_initialisation_follows_each_family():
    torch.manual_seed(0)
    cifar = create_model("resnet32_experts", num_classes=100, num_experts=1, use_norm=False)
    conv = cifar.tails[0][1][1].conv1  # 48 -> 48, 3x3: Kaiming normal, fan in 432
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 432), rel=0.05)
    assert cifar.heads[0].weight.std().item() == pytest.approx(math.sqrt(2 / 48), rel=0.1)
    router = nn.Linear(48, 16)
    cifar.init_weights(router)  # the official CIFAR EA model gives its routers Kaiming weights
    assert router.weight.std().item() == pytest.approx(math.sqrt(2 / 48), rel=0.15)

    imagenet = create_model("resnet10_experts", num_classes=10, num_experts=1, use_norm=False)
    conv = imagenet.tails[0][1][0].conv2  # 384 -> 384, 3x3: normal(0, sqrt(2 / (9 * 384)))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 384)), rel=0.02)
    bn = imagenet.tails[0][1][0].bn2
    assert torch.equal(bn.weight, torch.ones(384)) and torch.equal(bn.bias, torch.zeros(384))
    bound = 1 / math.sqrt(384)  # nn.Linear keeps PyTorch's default uniform(-1/sqrt(in), 1/sqrt(in))
    assert imagenet.heads[0].weight.abs().max().item() <= bound
    router = nn.Linear(384, 16)
    before = router.weight.clone()
    imagenet.init_weights(router)
    assert torch.equal(router.weight, before)


# ----------------------------------------------------------------------------- compute

# thop (as utils/gflops.py ran it) counts BatchNorm as 4 ops per input element, AvgPool2d as one
# per output element, and nothing for RIDE's cosine classifier (gflops.py registers a custom op
# only for the NormedLinear classes of other files); with those rules our counter must reproduce
# its totals exactly.
THOP_RULES = {
    nn.Conv2d: conv_macs,
    nn.Linear: linear_macs,
    nn.BatchNorm2d: lambda m, inputs, out: 4 * inputs[0].numel(),
}

# MACs by hand, CIFAR-100 32x32: stem 32*32*16*27 = 442,368; layer1 10 * 1024*16*144 = 23,592,960.
# Reduced expert: layer2 256*24*144 + 9 * 256*24*216 = 12,828,672; layer3 64*48*216 + 9 * 64*48*432
# = 12,607,488; cosine classifier 48*100 = 4,800.
TRUNK = 442_368 + 23_592_960
EXPERT = 12_828_672 + 12_607_488 + 4_800


@pytest.mark.parametrize(
    "experts, by_hand, thop",
    [
        (2, TRUNK + 2 * EXPERT, 76_365_824),  # ride.md: 0.0764 GMACs
        (3, TRUNK + 3 * EXPERT, 102_170_624),  # ride.md: 0.1022 GMACs
    ],
)
def test_ride_resnet32_macs_by_hand_and_as_thop_counts_them(experts, by_hand, thop):
    net = create_model("resnet32_experts", num_classes=100, num_experts=experts).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), MacCounter(net) as ours, MacCounter(net, THOP_RULES) as as_thop:
        net(x)
    assert ours.macs == by_hand
    assert as_thop.macs == thop


def test_single_resnet32_macs_as_thop_counts_them():
    net = create_model("resnet32", num_classes=100).eval()
    with torch.no_grad():
        assert count_macs(net, lambda: net(torch.randn(1, 3, 32, 32)), THOP_RULES) == 70_080_768  # 0.0701


def test_ride_resnext50_macs_as_thop_counts_them():
    net = create_model("resnext50_experts", num_classes=1000, num_experts=3, use_norm=False).eval()
    with torch.no_grad(), MacCounter(net, THOP_RULES) as as_thop:
        net(torch.randn(1, 3, 224, 224))
    # + thop's AvgPool2d(7): one op per pooled output, 1536 per expert (ours pools functionally)
    assert as_thop.macs + 3 * 1536 == 6_126_536_192  # ride.md: 6.127 GMACs


def test_counter_sees_the_real_batch_and_removes_its_hooks():
    net = create_model("resnet32_experts", num_classes=10, num_experts=2).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        one = count_macs(net, lambda: net(x[:1]))
        three = count_macs(net, lambda: net(x))
        shared = net.forward_trunk(x)
        trunk_only = count_macs(net, lambda: net.forward_trunk(x))
        expert = count_macs(net, lambda: net.forward_expert(shared[:2], 1))
    assert three == 3 * one
    assert trunk_only + 2 * 3 * (expert // 2) == three  # trunk + two experts on three images
    assert all(not m._forward_hooks for m in net.modules())
