"""Whole-batch augmentations: each output is a valid crop / flip / rotation of its input."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ltbench.augment import Normalize, random_hflip, random_pad_crop, random_rotate, rotate


def images(n=6, c=2, h=8, w=8):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_pad_crop_outputs_a_window_of_the_padded_image():
    x = images()
    out = random_pad_crop(x, 4, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4))
    offsets = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert hits, f"image {i} is not a crop of its padded input"
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets are drawn per image


def test_hflip_per_image_and_reproducible():
    x = images(n=32)
    out = random_hflip(x, torch.Generator().manual_seed(3))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    assert torch.equal(out, random_hflip(x, torch.Generator().manual_seed(3)))


def test_rotation_equals_torchvision_nearest():
    x = images()
    for degrees in (90.0, 30.0, -15.0, 7.0):
        ref = TF.rotate(x, degrees, interpolation=InterpolationMode.NEAREST)
        assert torch.equal(rotate(x, torch.full((len(x),), math.radians(degrees))), ref)
    assert torch.equal(random_rotate(x, 0.0, torch.Generator().manual_seed(0)), x)


def test_normalize_by_hand():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    out = Normalize((0.5,), (0.25,))(x)
    assert torch.allclose(out, torch.tensor([[[[-2.0, 2.0]]]]))


def test_batches_come_out_channels_last():
    for c in (1, 3):
        out = Normalize((0.5,) * c, (0.25,) * c)(images(c=c))
        assert out.stride(1) == 1 and out.stride(3) == c  # NHWC strides, also for one channel
