"""Shared backbones: sizes derived by hand, shortcut behaviour, the cosine classifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltbench.errors import UnknownNameError
from ltbench.models import create_model
from ltbench.models.compute import count_macs
from ltbench.models.heads import NormedLinear
from ltbench.models.resnet_cifar import BasicBlock, PadShortcut


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_resnet32_size_and_shapes():
    # He et al. 2016: ResNet-32 for CIFAR-10 has 0.46M parameters (464,154 with option-A shortcuts)
    net = create_model("resnet32", num_classes=10, in_chans=3)
    assert n_params(net) == 464154
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    grey = create_model("resnet32", num_classes=10, in_chans=1)
    assert n_params(grey) == 464154 - 2 * 16 * 9  # stem conv sees one channel instead of three
    assert grey(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_resnet8_size_and_macs():
    # one BasicBlock per stage: stem 3*16*9 + BN 32; 16->16: 2 * 16*16*9 + 2 BN 32; 16->32:
    # 16*32*9 + 32*32*9 + 2 BN 64; 32->64: 32*64*9 + 64*64*9 + 2 BN 128; fc 64*10 + 10
    net = create_model("resnet8", num_classes=10, in_chans=3)
    assert n_params(net) == 464 + 4672 + 13952 + 55552 + 650 == 75290
    grey = create_model("resnet8", num_classes=10, in_chans=1)
    # MACs at 28 px: every conv is out_h * out_w * out_c * in_c * 9 (28, 28, 14, 14, 7, 7 px), then fc
    convs = [(28, 16, 1), (28, 16, 16), (28, 16, 16), (14, 32, 16), (14, 32, 32), (7, 64, 32), (7, 64, 64)]
    expected = sum(side * side * out_c * in_c * 9 for side, out_c, in_c in convs) + 64 * 10
    assert expected == 9_145_216
    assert count_macs(grey, lambda: grey(torch.zeros(1, 1, 28, 28))) == expected


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0
    block = BasicBlock(16, 32, stride=2, shortcut="B")
    assert block(x).shape == (2, 32, 4, 4)


def test_small_vit_size():
    # patch embed 1*16*128+128, cls 128, pos 50*128, 4 blocks of 198,272, final norm 256, head 128*10+10
    vit = create_model(
        "vit",
        num_classes=10,
        in_chans=1,
        img_size=28,
        embed_dim=128,
        depth=4,
        num_heads=4,
        patch_size=4,
        arch_ignored="x",
    )
    assert n_params(vit) == 2176 + 128 + 6400 + 4 * 198272 + 256 + 1290
    assert vit(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_model():
    with pytest.raises(UnknownNameError, match="Valid models: .*resnet32"):
        create_model("resnet33", num_classes=10)


def test_normed_linear_is_scaled_cosine():
    torch.manual_seed(0)
    head = NormedLinear(5, 3, scale=30.0)
    assert torch.allclose(head.weight.norm(dim=0), torch.ones(3), atol=1e-5)  # unit-norm columns at init
    x = torch.randn(4, 5)
    cos = F.cosine_similarity(x[:, :, None], head.weight[None], dim=1)
    assert torch.allclose(head(x), 30.0 * cos, atol=1e-5)
