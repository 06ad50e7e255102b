"""The CIFAR-10 AutoAugment of SHIKE and MDCS (``autoaugment.py`` / ``data_loader/autoaug.py``,
the DeepVoltaire implementation): each operation on a fixed image against the official formulas,
worked out here by hand (pixel arithmetic, or PIL called with the official affine matrix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision.transforms import v2

import ltbench.augment as augment
from ltbench.augment import CIFAR10_POLICY, RECIPES, CIFAR10Policy, autoaug_op
from ltbench.data import LTData


def fixed_image(mode: str = "RGB", size: int = 32) -> Image.Image:
    bands = 3 if mode == "RGB" else 1
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, bands), dtype=np.uint8)
    return Image.fromarray(pixels if bands == 3 else pixels[..., 0], mode)


def ramp() -> Image.Image:
    """Every value 0..255 once, in each of the three bands."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return Image.fromarray(np.stack([values, values[::-1], values.T], -1), "RGB")


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int64)


@pytest.fixture
def sign(monkeypatch):
    """Fix the random sign the official operations draw (``random.choice([-1, 1])``)."""

    def set_sign(value: int) -> None:
        monkeypatch.setattr(augment, "_random_sign", lambda: value)

    return set_sign


# the official ``ranges`` at the bins the CIFAR-10 policy uses, by hand
def official_magnitude(name: str, bin_: int) -> float:
    table = {
        "shearX": 0.3 / 9,
        "shearY": 0.3 / 9,
        "translateX": 150 / 331 / 9,
        "translateY": 150 / 331 / 9,
        "rotate": 30 / 9,
        "color": 0.1,
        "contrast": 0.1,
        "sharpness": 0.1,
        "brightness": 0.1,
    }
    if name == "solarize":
        return 256 - 256 / 9 * bin_
    if name == "posterize":
        return [8, 8, 7, 7, 6, 6, 5, 5, 4, 4][bin_]
    return table[name] * bin_


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("axis", ["translateX", "translateY"])
def test_translate_is_a_fractional_shift_of_magnitude_times_size_sampled_nearest(sign, axis, direction):
    """Official: affine offset m * size (150/331 * 32 = 14.50 px at bin 9), nearest sampling of
    output pixel centres: output x reads input floor(x + 0.5 + offset), else the grey fill. The
    +- shifts are 15 px either way (torchvision shifts by int(14.50) = 14)."""
    img, size = fixed_image(), 32
    sign(direction)
    out = arr(autoaug_op(axis, img, official_magnitude(axis, 9), fill=128))
    offset = direction * 150 / 331 * size
    source = np.floor(np.arange(size) + 0.5 + offset).astype(int)
    inside = (source >= 0) & (source < size)
    expected = np.full((size, size, 3), 128)
    src = arr(img)
    if axis == "translateX":
        expected[:, inside] = src[:, source[inside]]
    else:
        expected[inside] = src[source[inside]]
    assert np.array_equal(out, expected)
    assert inside.sum() == size - 15  # a 15-px shift, both signs


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("axis", ["shearX", "shearY"])
def test_shear_is_bicubic_about_the_origin_with_the_signed_magnitude(sign, axis, direction):
    img = fixed_image()
    sign(direction)
    m = direction * 0.3 * 8 / 9  # bin 8
    out = autoaug_op(axis, img, official_magnitude(axis, 8), fill=128)
    matrix = (1, m, 0, 0, 1, 0) if axis == "shearX" else (1, 0, 0, m, 1, 0)
    bicubic = img.transform((32, 32), Image.AFFINE, matrix, Image.BICUBIC, fillcolor=(128, 128, 128))
    nearest = img.transform((32, 32), Image.AFFINE, matrix, Image.NEAREST, fillcolor=(128, 128, 128))
    assert np.array_equal(arr(out), arr(bicubic))
    assert not np.array_equal(arr(out), arr(nearest))
    # the corner sheared out of the image (x + m y, or y + m x, beyond the border) is grey
    far = (31, 31) if direction > 0 else (0, 31) if axis == "shearX" else (31, 0)
    assert out.getpixel(far) == (128, 128, 128)


@pytest.mark.parametrize("bin_", [2, 9])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_rotate_is_always_counter_clockwise_by_the_magnitude_composited_over_grey(sign, bin_, mode):
    """Official ``rotate_with_fill``: the RGBA image rotated by +magnitude (nearest), composited
    over an RGBA grey (128,) * 4 through its own alpha, converted back; no random sign."""
    img = fixed_image(mode)
    degrees = 30 * bin_ / 9
    rgba = img.convert("RGBA").rotate(degrees)
    expected = Image.composite(rgba, Image.new("RGBA", rgba.size, (128,) * 4), rgba).convert(mode)
    for direction in (1, -1):  # a sign draw, were there one, could not change the result
        sign(direction)
        assert np.array_equal(arr(autoaug_op("rotate", img, official_magnitude("rotate", bin_))), arr(expected))
    # counter-clockwise: the top-right corner of the rotated image is grey (moved in), by 30 degrees
    if bin_ == 9 and mode == "RGB":
        assert expected.getpixel((31, 0)) == (128, 128, 128) and expected.getpixel((16, 16)) == img.rotate(30).getpixel(
            (16, 16)
        )


def test_solarize_inverts_from_the_linspace_256_thresholds():
    img = ramp()
    v = arr(img)
    for bin_ in range(10):
        threshold = 256 - 256 * bin_ / 9  # linspace(256, 0, 10)
        expected = np.where(v < threshold, v, 255 - v)
        assert np.array_equal(arr(autoaug_op("solarize", img, official_magnitude("solarize", bin_))), expected)
    # bin 0 keeps 255 (torchvision's threshold 255 inverts it); bin 2 keeps 199 (torchvision: 198.3)
    assert arr(autoaug_op("solarize", img, 256.0)).max() == 255
    assert autoaug_op("solarize", img, official_magnitude("solarize", 2)).getpixel((7, 12))[0] == 199


def test_posterize_keeps_round_linspace_8_4_bits():
    img = ramp()
    for bin_, bits in enumerate([8, 8, 7, 7, 6, 6, 5, 5, 4, 4]):
        expected = arr(img) & (0xFF << (8 - bits)) & 0xFF
        assert np.array_equal(arr(autoaug_op("posterize", img, official_magnitude("posterize", bin_))), expected)


@pytest.mark.parametrize("direction", [1, -1])
def test_brightness_blends_with_black_by_one_plus_signed_magnitude(sign, direction):
    """ImageEnhance.Brightness = Image.blend(black, img, f): f * v in single precision, truncated
    and clipped to [0, 255]."""
    img = ramp()
    sign(direction)
    factor = np.float32(1 + direction * 0.1 * 7)
    expected = np.clip(np.floor(factor * arr(img).astype(np.float32)), 0, 255)
    assert np.array_equal(arr(autoaug_op("brightness", img, official_magnitude("brightness", 7))), expected)


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize(
    "name, enhancer",
    [("color", ImageEnhance.Color), ("contrast", ImageEnhance.Contrast), ("sharpness", ImageEnhance.Sharpness)],
)
def test_enhance_operations_use_pil_with_one_plus_signed_magnitude(sign, name, enhancer, direction):
    img = fixed_image()
    sign(direction)
    expected = enhancer(img).enhance(1 + direction * 0.1 * 7)
    assert np.array_equal(arr(autoaug_op(name, img, official_magnitude(name, 7))), arr(expected))
    other = enhancer(img).enhance(1 - direction * 0.1 * 7)
    assert not np.array_equal(arr(expected), arr(other))


def test_invert_equalize_and_autocontrast_are_the_pil_operations():
    img = fixed_image()
    assert np.array_equal(arr(autoaug_op("invert", img, 0.0)), 255 - arr(img))
    assert np.array_equal(arr(autoaug_op("equalize", img, 0.0)), arr(ImageOps.equalize(img)))
    low = Image.fromarray((arr(img) // 2 + 40).astype(np.uint8), "RGB")  # range 40..167 per band
    stretched = arr(autoaug_op("autocontrast", low, 0.0))
    lo, hi = arr(low).min((0, 1)), arr(low).max((0, 1))
    # ImageOps.autocontrast: per band, lut[i] = int((i - lo) * 255 / (hi - lo)), clipped
    expected = np.clip(((arr(low) - lo) * (255.0 / (hi - lo))).astype(np.int64), 0, 255)
    assert np.array_equal(stretched, expected)


def test_policy_table_is_torchvisions_cifar10_policy():
    """The 25 sub-policies agree with torchvision's independent copy of the paper's table."""
    tv = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)._policies
    assert len(CIFAR10_POLICY) == len(tv) == 25
    for ours, theirs in zip(CIFAR10_POLICY, tv):
        for (p, name, bin_), (tv_name, tv_p, tv_bin) in zip(ours, theirs):
            assert name.lower() == tv_name.lower() and p == tv_p
            assert tv_bin is None or bin_ == tv_bin


def test_policy_draws_from_torchs_rng_and_applies_each_operation_with_its_probability(monkeypatch):
    calls = []
    monkeypatch.setattr(augment, "autoaug_op", lambda name, img, m, fill: calls.append((name, m, fill)) or img)
    policy = CIFAR10Policy(fill=128)
    torch.manual_seed(0)
    draws = []
    for _ in range(400):
        calls.clear()
        policy(fixed_image(size=4))
        draws.append(tuple(calls))
    torch.manual_seed(0)
    first = []
    for _ in range(5):
        calls.clear()
        policy(fixed_image(size=4))
        first.append(tuple(calls))
    assert first == draws[:5]  # reproducible from torch's seed
    # sub-policy 2 is (0.7 rotate bin 2, 0.3 translateX bin 9): rotations by 30 * 2 / 9 degrees only
    rotations = {m for d in draws for name, m, _ in d if name == "rotate"}
    assert len(rotations) == 1 and rotations.pop() == pytest.approx(20 / 3)
    assert all(fill == 128 for d in draws for *_, fill in d)
    # invert of sub-policy 15 has probability 0: never after solarize
    assert not any(d == (("solarize", pytest.approx(256 - 256 * 2 / 9), 128), ("invert", 0.0, 128)) for d in draws)


@pytest.mark.parametrize("name", ["autoaug_cutout", "autoaug_cutout_torchvision"])
@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28)])
def test_recipes_take_uint8_tensors_and_are_seeded(name, channels, size):
    data = LTData.__new__(LTData)
    data.image_size, data.mean, data.std = size, (0.5,) * channels, (0.25,) * channels
    recipe = RECIPES.get(name)(data)
    image = torch.randint(0, 256, (channels, size, size), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    torch.manual_seed(3)
    out = recipe.sample(image)
    torch.manual_seed(3)
    again = recipe.sample(image)
    assert out.shape == (channels, size, size) and out.dtype == torch.float32 and torch.equal(out, again)
    assert recipe.batch is None
    policies = [t for t in recipe.sample.transforms if isinstance(t, (CIFAR10Policy, v2.AutoAugment))]
    assert [type(p) for p in policies] == [CIFAR10Policy if name == "autoaug_cutout" else v2.AutoAugment]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_operation_keeps_mode_and_size_of_rgb_and_grey_images(mode):
    img = fixed_image(mode, size=28)  # Fashion-MNIST-LT is greyscale, 28 px
    for name, magnitudes in augment._MAGNITUDES.items():
        out = autoaug_op(name, img, magnitudes[9] if magnitudes else 0.0)
        assert (out.mode, out.size) == (mode, (28, 28)), name
