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


# ----------------------------------------------------------------------------- resizing batch forms (ViT recipes)


def pil_bicubic(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """What the per-image recipes do: PIL's bicubic resize of each uint8 [C,H,W] image."""
    from PIL import Image

    return torch.stack([TF.pil_to_tensor(TF.to_pil_image(im).resize((w, h), Image.BICUBIC)) for im in x])


def tiny_data(stored: int, size: int, c: int = 3):
    from ltbench.data import LTData, TensorSplit

    x = torch.randint(0, 256, (6, c, stored, stored), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    split = TensorSplit(x, [0, 1, 0, 1, 0, 1])
    return LTData("t", 2, c, size, (0.5,) * c, (0.25,) * c, split, None, split, "x")


def test_bicubic_batch_resize_is_pils_up_to_one_grey_level():
    from ltbench.augment import resize_bicubic

    for c in (1, 3):
        for h, w, out in ((32, 32, (224, 224)), (32, 32, (256, 256)), (28, 28, (32, 32)), (60, 40, (24, 16))):
            x = images(n=3, c=c, h=h, w=w)
            diff = (resize_bicubic(x, out).int() - pil_bicubic(x, *out).int()).abs()
            assert diff.max() <= 2 and (diff > 0).float().mean() < 0.005, (c, h, w, out)


def test_resize_center_crop_batch_form_matches_the_per_image_recipe():
    from ltbench.augment import build_recipes

    data = tiny_data(32, 224)  # CIFAR upsampled for a ViT-B/16: Resize(256, bicubic) + CenterCrop(224)
    recipe = build_recipes(["resize_center_crop_bicubic"], data, train=False)[0]
    assert recipe.batch is not None  # kept although the stored size differs: it resizes
    x = data.train.images
    ours = recipe.batch(x, torch.Generator())
    ref = torch.stack([recipe.sample(im) for im in x])
    assert ours.shape == ref.shape == (6, 3, 224, 224)
    level = 1 / 255 / 0.25  # one grey level after normalisation
    diff = (ours - ref).abs()
    assert diff.max() <= 2 * level + 1e-5 and (diff > 1e-5).float().mean() < 0.005


def test_rrc_boxes_follow_torchvisions_rules():
    from ltbench.augment import rrc_boxes

    boxes = rrc_boxes(200, 32, 48, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    for top, left, ch, cw in boxes:
        assert 0 <= top <= 32 - ch and 0 <= left <= 48 - cw
        # areas and aspect ratios of the drawn box, up to the rounding of its sides
        assert 0.2 * 32 * 48 - (ch + cw + 1) <= ch * cw <= 32 * 48
        assert 3 / 4 - 1 / min(ch, cw) <= cw / ch <= 4 / 3 + 1 / min(ch, cw)
    assert len(set(boxes)) > 150
    # no box of that area fits in ten tries: the central crop, clamped to the largest ratio 4/3
    assert rrc_boxes(1, 10, 40, (5.0, 6.0), (3 / 4, 4 / 3), torch.Generator()) == [(0, 13, 10, 13)]


def test_mae_rrc_flip_batch_form_is_seeded_and_crops_then_resizes():
    from ltbench.augment import build_recipes, resize_bicubic, rrc_boxes

    data = tiny_data(32, 64, c=1)
    recipe = build_recipes(["mae_rrc_flip"], data)[0]
    x = data.train.images
    out = recipe.batch(x, torch.Generator().manual_seed(7))
    assert out.shape == (6, 1, 64, 64) and out.stride(1) == 1  # channels-last, as every batch form
    assert torch.equal(out, recipe.batch(x, torch.Generator().manual_seed(7)))  # same seed, same batch
    assert not torch.equal(out, recipe.batch(x, torch.Generator().manual_seed(8)))
    # each image is the bicubic resize of its drawn box, flipped or not, normalised
    gen = torch.Generator().manual_seed(7)
    boxes = rrc_boxes(6, 32, 32, (0.2, 1.0), (3 / 4, 4 / 3), gen)
    for i, (top, left, ch, cw) in enumerate(boxes):
        crop = resize_bicubic(x[i : i + 1, :, top : top + ch, left : left + cw], (64, 64))
        expected = (crop.float() / 255 - 0.5) / 0.25
        assert torch.allclose(out[i : i + 1], expected, atol=1e-5) or torch.allclose(
            out[i : i + 1], expected.flip(3), atol=1e-5
        )
