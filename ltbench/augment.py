"""Augmentation recipes, by name, each usable on a whole in-memory batch and/or image by image.

A recipe is built for a dataset (image size, mean/std) and has up to two forms:
``batch(images_uint8[B,C,H,W], generator) -> float`` runs on the training device over a whole
batch (the fast path for in-memory datasets), and ``sample(image) -> float[C,H,W]`` runs in
DataLoader workers on a PIL image or a uint8 tensor (file datasets, or per-image policies such as
RandAugment). Stages name recipes in ``stages.<stage>.augment``, one per view; ``default`` is the
dataset's own training recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from .data import BatchTransform, LTData, SampleTransform, TensorSplit, to_device
from .errors import ConfigError
from .filelists import IMAGENET_MEAN
from .registry import Registry

RECIPES: Registry = Registry("augmentation recipe")
register_recipe = RECIPES.register


@dataclass
class Recipe:
    batch: BatchTransform | None = None
    sample: SampleTransform | None = None
    resizes: bool = False  # the batch form sets its output size itself, whatever the stored size


def build_recipes(names: list[str], data: LTData, train: bool = True) -> list[Recipe]:
    """Build one recipe per view; ``default`` means the dataset's train (or eval) recipe."""
    out = []
    stored = data.train.images.shape[-1] if isinstance(data.train, TensorSplit) else None
    for name in names:
        if name == "default":
            name = data.train_augment if train else data.eval_augment
        recipe = RECIPES.get(name)(data)
        resized = stored is not None and stored != data.image_size and not recipe.resizes
        if recipe.sample is None and resized:
            raise ConfigError(
                f"augmentation recipe {name!r} keeps the stored {stored}-px images, but this run works at "
                f"{data.image_size} px (data.image_size); use a resizing recipe such as rrc_flip, "
                "randaug_erase or resize_center_crop_bicubic"
            )
        if resized:
            recipe = Recipe(sample=recipe.sample)  # this batch form keeps the stored size
        out.append(recipe)
    if not out:
        raise ConfigError("augment: a stage needs at least one view (e.g. augment=default)")
    return out


# ----------------------------------------------------------------------------- batch pieces


class Normalize:
    """uint8 [B,C,H,W] -> float, scaled to [0, 1] and standardised per channel, in channels-last
    memory layout: convolutions (oneDNN on CPU, cuDNN under AMP) run markedly faster on it
    (ResNet-32 on Fashion-MNIST: about 0.33 s instead of 0.44 s per step of 128 on 2 cores)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        if self.mean.device != images.device:
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        return channels_last((images.float().div_(255.0) - self.mean) / self.std)


def channels_last(x: Tensor) -> Tensor:
    """[B,C,H,W] with channels-last strides, also for C = 1 (where ``.contiguous(memory_format=
    torch.channels_last)`` keeps the default strides, which the convolution kernels treat as NCHW)."""
    b, c, h, w = x.shape
    return torch.empty_strided(x.shape, (h * w * c, 1, w * c, c), dtype=x.dtype, device=x.device).copy_(x)


def random_pad_crop(images: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Zero-pad by ``pad`` and crop back to the original size at a random offset per image."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = to_device(torch.randint(0, 2 * pad + 1, (2, b), generator=gen), images.device)
    rows = (offsets[0, :, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # [B,H,W,C] -> [B,C,H,W]


def random_hflip(images: Tensor, gen: torch.Generator, p: float = 0.5) -> Tensor:
    flip = to_device(torch.rand(images.shape[0], generator=gen) < p, images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def rotate(images: Tensor, angles: Tensor) -> Tensor:
    """Rotate each image counter-clockwise by its angle (radians) about its centre, nearest
    neighbour, zero fill, same size (torchvision's ``rotate`` with NEAREST)."""
    b = images.shape[0]
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros(b)
    # affine_grid maps output to input coordinates; with y pointing down this turns counter-clockwise
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(to_device(theta, images.device), list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(images.dtype)


def random_rotate(images: Tensor, degrees: float, gen: torch.Generator) -> Tensor:
    """Rotate each image by a uniform angle in [-degrees, degrees] (``RandomRotation(degrees)``)."""
    angles = (torch.rand(images.shape[0], generator=gen) * 2 - 1) * math.radians(degrees)
    return rotate(images, angles)


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """``Resize(size)``'s output: the shorter side to ``size``, the other in proportion (truncated)."""
    return (size, int(size * w / h)) if h <= w else (int(size * h / w), size)


def resize_bicubic(images: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 [B,C,H,W] resized to ``size`` as PIL's bicubic does it: Keys a = -0.5, antialiased when
    shrinking (torch's ``antialias=True`` kernels follow PIL's), the width first, rounded and clipped
    to 8 bits, then the height (PIL's two passes; without the 8-bit step the overshoot of bicubic
    upsampling moves pixels by tens of grey levels). Equal to PIL up to one grey level, where its
    fixed-point arithmetic rounds the other way."""
    out = images.float()
    for step in ((out.shape[-2], size[1]), size):  # PIL: horizontal pass, 8-bit, then vertical
        out = F.interpolate(out, size=step, mode="bicubic", antialias=True, align_corners=False).round_().clamp_(0, 255)
    return out.to(torch.uint8)


def center_crop(images: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` window (torchvision's ``CenterCrop`` offsets)."""
    h, w = images.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def rrc_boxes(
    b: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator
) -> list[tuple[int, int, int, int]]:
    """``RandomResizedCrop.get_params`` for ``b`` images of h x w drawn from ``gen``: (top, left,
    height, width) of a box of area in ``scale`` and aspect ratio in ``ratio`` (log-uniform), ten
    tries, else the central box clamped to ``ratio``."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    boxes = []
    for _ in range(b):
        for _ in range(10):
            u = torch.rand(2, generator=gen, dtype=torch.float64).tolist()  # a CPU generator: no device sync
            area = h * w * (scale[0] + u[0] * (scale[1] - scale[0]))
            aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
            cw, ch = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
                boxes.append((top, left, ch, cw))
                break
        else:
            cw, ch = w, h
            if w / h < ratio[0]:
                ch = int(round(w / ratio[0]))
            elif w / h > ratio[1]:
                cw = int(round(h * ratio[1]))
            boxes.append(((h - ch) // 2, (w - cw) // 2, ch, cw))
    return boxes


def random_resized_crop(
    images: Tensor, size: int, gen: torch.Generator, scale: tuple[float, float] = (0.08, 1.0)
) -> Tensor:
    """``RandomResizedCrop(size, scale, bicubic)`` per image of a uint8 batch on its device: each
    drawn box resized by :func:`resize_bicubic` (one small kernel per image)."""
    b, _, h, w = images.shape
    boxes = rrc_boxes(b, h, w, scale, (3 / 4, 4 / 3), gen)
    crops = [
        resize_bicubic(images[i : i + 1, :, top : top + ch, left : left + cw], (size, size))
        for i, (top, left, ch, cw) in enumerate(boxes)
    ]
    return torch.cat(crops)


class Staged:
    """A per-image recipe whose steps end on uint8, split where the floats begin: ``image`` runs in
    the DataLoader workers (decode, crop, flip, ...; uint8 [C,H,W] out, so a quarter of the bytes go
    through pinned memory and the host-to-device copy) and :meth:`device` scales and standardises
    the collated batch on the training device. Called on one image it is the whole recipe, with the
    same values (the same torchvision operations in the same order)."""

    def __init__(self, image: Callable, mean: tuple[float, ...], std: tuple[float, ...], decode_size: int = 0) -> None:
        self.image, self.mean, self.std = image, list(mean), list(std)
        self.decode_size = decode_size  # > 0: the recipe first resizes the shorter side to this (Image.draft)
        self.on_tensors = not any(step is _to_pil for step in getattr(image, "transforms", ()))  # no PIL step

    def _finish(self, images: Tensor) -> Tensor:
        return v2.functional.normalize(v2.functional.to_dtype(images, torch.float32, scale=True), self.mean, self.std)

    @property
    def transforms(self) -> list:
        """The steps up to the uint8 output (as ``Compose.transforms``)."""
        return self.image.transforms

    def uint8(self, image) -> Tensor:
        return self.image(image).as_subclass(Tensor)

    def device(self, images: Tensor) -> Tensor:
        """uint8 [B,C,H,W] on the device -> the recipe's float output, channels-last like every batch form."""
        return channels_last(self._finish(images))

    def __call__(self, image) -> Tensor:
        return self._finish(self.uint8(image))


def _sample_pipeline(data: LTData, *steps, pil: bool = False, decode_size: int = 0) -> Staged:
    """The per-image recipe ``steps`` on a uint8 tensor (or, with ``pil``, on a PIL image: PIL's
    resampling, as the official timm-based codes), then scaled and standardised. ``decode_size``:
    the steps start by resizing the shorter side to it, so JPEGs may be decoded at about that size."""
    head = [_to_pil, *steps, v2.ToImage()] if pil else [v2.ToImage(), *steps]
    return Staged(v2.Compose(head), data.mean, data.std, decode_size)


# ----------------------------------------------------------------------------- recipes


@register_recipe("normalize")
def normalize(data: LTData) -> Recipe:
    """No augmentation: scale and standardise (evaluation of small in-memory images)."""
    norm = Normalize(data.mean, data.std)
    return Recipe(batch=lambda images, gen: norm(images), sample=_sample_pipeline(data))


@register_recipe("pad_crop_flip")
def pad_crop_flip(data: LTData) -> Recipe:
    """RandomCrop(size, padding=4) + horizontal flip: the CIFAR-style standard."""
    norm = Normalize(data.mean, data.std)

    def batch(images: Tensor, gen: torch.Generator) -> Tensor:
        return norm(random_hflip(random_pad_crop(images, 4, gen), gen))

    sample = _sample_pipeline(data, v2.RandomCrop(data.image_size, padding=4), v2.RandomHorizontalFlip())
    return Recipe(batch=batch, sample=sample)


@register_recipe("pad_crop_flip_rotate")
def pad_crop_flip_rotate(data: LTData) -> Recipe:
    """RandomCrop(size, padding=4) + flip + RandomRotation(15) (RIDE's and MDCS's CIFAR recipe)."""
    norm = Normalize(data.mean, data.std)

    def batch(images: Tensor, gen: torch.Generator) -> Tensor:
        return norm(random_rotate(random_hflip(random_pad_crop(images, 4, gen), gen), 15, gen))

    sample = _sample_pipeline(
        data, v2.RandomCrop(data.image_size, padding=4), v2.RandomHorizontalFlip(), v2.RandomRotation(15)
    )
    return Recipe(batch=batch, sample=sample)


class Cutout:
    """Zero one ``length`` x ``length`` square (clipped at the borders) centred at a uniformly drawn
    pixel of a float [C,H,W] image, before normalisation (DeVries & Taylor 2017; the ``Cutout(n_holes=1,
    length=16)`` of SHIKE's and MDCS's CIFAR recipes)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        cy, cx = int(torch.randint(0, h, (1,))), int(torch.randint(0, w, (1,)))
        half = self.length // 2
        y0, y1 = max(cy - half, 0), min(cy + half, h)
        x0, x1 = max(cx - half, 0), min(cx + half, w)
        image = image.clone()
        image[..., y0:y1, x0:x1] = 0
        return image


# ----------------------------------------------------------------------------- AutoAugment (CIFAR-10 policy)
# The policy as SHIKE's ``autoaugment.py`` and MDCS's ``data_loader/autoaug.py`` run it (both the
# DeepVoltaire implementation: PIL operations, 10 magnitude bins). torchvision's AutoAugment has the
# same 25 sub-policies and bins but differs in four operations: it rotates by a random sign, shears
# with nearest-neighbour sampling, translates by the whole pixels int(magnitude * size) instead of
# the fractional shift, and solarizes at 255 * linspace(1, 0) instead of linspace(256, 0); on tensors
# its colour operations also round differently from PIL's ImageEnhance.

AUTOAUG_BINS = 10
# magnitude of each operation at bin 0..9 (the official ``ranges``); None: no magnitude
_MAGNITUDES: dict[str, list[float] | None] = {
    "shearX": [0.3 * i / 9 for i in range(AUTOAUG_BINS)],
    "shearY": [0.3 * i / 9 for i in range(AUTOAUG_BINS)],
    "translateX": [150 / 331 * i / 9 for i in range(AUTOAUG_BINS)],  # a fraction of the image side
    "translateY": [150 / 331 * i / 9 for i in range(AUTOAUG_BINS)],
    "rotate": [30 * i / 9 for i in range(AUTOAUG_BINS)],  # degrees
    "color": [0.9 * i / 9 for i in range(AUTOAUG_BINS)],
    "posterize": [8, 8, 7, 7, 6, 6, 5, 5, 4, 4],  # bits kept: round(linspace(8, 4, 10))
    "solarize": [256 - 256 * i / 9 for i in range(AUTOAUG_BINS)],  # threshold: linspace(256, 0, 10)
    "contrast": [0.9 * i / 9 for i in range(AUTOAUG_BINS)],
    "sharpness": [0.9 * i / 9 for i in range(AUTOAUG_BINS)],
    "brightness": [0.9 * i / 9 for i in range(AUTOAUG_BINS)],
    "autocontrast": None,
    "equalize": None,
    "invert": None,
}

# (probability, operation, bin) pairs of the 25 CIFAR-10 sub-policies (Cubuk et al. 2019, Table 7)
CIFAR10_POLICY: tuple[tuple[tuple[float, str, int], tuple[float, str, int]], ...] = (
    ((0.1, "invert", 7), (0.2, "contrast", 6)),
    ((0.7, "rotate", 2), (0.3, "translateX", 9)),
    ((0.8, "sharpness", 1), (0.9, "sharpness", 3)),
    ((0.5, "shearY", 8), (0.7, "translateY", 9)),
    ((0.5, "autocontrast", 8), (0.9, "equalize", 2)),
    ((0.2, "shearY", 7), (0.3, "posterize", 7)),
    ((0.4, "color", 3), (0.6, "brightness", 7)),
    ((0.3, "sharpness", 9), (0.7, "brightness", 9)),
    ((0.6, "equalize", 5), (0.5, "equalize", 1)),
    ((0.6, "contrast", 7), (0.6, "sharpness", 5)),
    ((0.7, "color", 7), (0.5, "translateX", 8)),
    ((0.3, "equalize", 7), (0.4, "autocontrast", 8)),
    ((0.4, "translateY", 3), (0.2, "sharpness", 6)),
    ((0.9, "brightness", 6), (0.2, "color", 8)),
    ((0.5, "solarize", 2), (0.0, "invert", 3)),
    ((0.2, "equalize", 0), (0.6, "autocontrast", 0)),
    ((0.2, "equalize", 8), (0.6, "equalize", 4)),
    ((0.9, "color", 9), (0.6, "equalize", 6)),
    ((0.8, "autocontrast", 4), (0.2, "solarize", 8)),
    ((0.1, "brightness", 3), (0.7, "color", 0)),
    ((0.4, "solarize", 5), (0.9, "autocontrast", 3)),
    ((0.9, "translateY", 9), (0.7, "translateY", 9)),
    ((0.9, "autocontrast", 2), (0.8, "solarize", 3)),
    ((0.8, "equalize", 8), (0.1, "invert", 3)),
    ((0.7, "translateY", 9), (0.9, "autocontrast", 1)),
)


def _random_sign() -> int:
    """-1 or +1 with equal probability, from torch's RNG (DataLoader workers seed it per worker)."""
    return 1 if int(torch.randint(0, 2, ())) else -1


def autoaug_op(name: str, img, magnitude: float, fill: int = 128):
    """One operation of the official policy on a PIL image. Shears, translations and the enhance
    factors 1 +- magnitude draw their sign here; rotation always turns counter-clockwise by
    +magnitude degrees. Areas moved in are ``fill`` (grey 128 in every band)."""
    from PIL import Image, ImageEnhance, ImageOps

    fillcolor = fill if len(img.getbands()) == 1 else (fill,) * len(img.getbands())
    width, height = img.size
    if name in ("shearX", "shearY", "translateX", "translateY"):
        m = magnitude * _random_sign()
        # PIL's affine maps output (x, y) to input (a x + b y + c, d x + e y + f)
        matrix = {
            "shearX": (1, m, 0, 0, 1, 0),
            "shearY": (1, 0, 0, m, 1, 0),
            "translateX": (1, 0, m * width, 0, 1, 0),  # a fractional shift, sampled nearest
            "translateY": (1, 0, 0, 0, 1, m * height),
        }[name]
        resample = Image.Resampling.BICUBIC if name.startswith("shear") else Image.Resampling.NEAREST
        return img.transform(img.size, Image.Transform.AFFINE, matrix, resample, fillcolor=fillcolor)
    if name == "rotate":
        # the official RGBA rotation composited over grey: with nearest sampling the alpha is 0 or
        # 255, so this is the rotation with the grey fill
        return img.rotate(magnitude, fillcolor=fillcolor)
    if name in ("color", "contrast", "sharpness", "brightness"):
        enhancer = {
            "color": ImageEnhance.Color,
            "contrast": ImageEnhance.Contrast,
            "sharpness": ImageEnhance.Sharpness,
            "brightness": ImageEnhance.Brightness,
        }[name]
        return enhancer(img).enhance(1 + magnitude * _random_sign())
    if name == "posterize":
        return ImageOps.posterize(img, int(magnitude))
    if name == "solarize":
        return ImageOps.solarize(img, magnitude)  # values >= the threshold are inverted
    if name == "autocontrast":
        return ImageOps.autocontrast(img)
    if name == "equalize":
        return ImageOps.equalize(img)
    if name == "invert":
        return ImageOps.invert(img)
    raise ValueError(f"unknown AutoAugment operation {name!r}")


class CIFAR10Policy:
    """AutoAugment's CIFAR-10 policy as the official SHIKE / MDCS code applies it: a uniformly drawn
    sub-policy, then each of its two operations with its probability. PIL image in, PIL image out;
    draws from torch's RNG (``torch.rand`` / ``torch.randint``), as the torchvision transforms do."""

    def __init__(self, fill: int = 128) -> None:
        self.fill = fill

    def __call__(self, img):
        sub_policy = CIFAR10_POLICY[int(torch.randint(0, len(CIFAR10_POLICY), ()))]
        for probability, name, bin_ in sub_policy:
            if float(torch.rand(())) < probability:
                img = autoaug_op(name, img, _MAGNITUDES[name][bin_] if _MAGNITUDES[name] else 0.0, self.fill)
        return img


@register_recipe("autoaug_cutout")
def autoaug_cutout(data: LTData) -> Recipe:
    """RandomCrop(size, padding=4) + flip + AutoAugment (:class:`CIFAR10Policy`, the official PIL
    operations, grey fill 128) + Cutout of half the image side (16 px at CIFAR's 32): the CIFAR
    recipe of SHIKE (``advanced_train``) and of MDCS's strong view."""
    return Recipe(
        sample=v2.Compose(
            [
                _to_pil,
                v2.RandomCrop(data.image_size, padding=4),
                v2.RandomHorizontalFlip(),
                CIFAR10Policy(fill=128),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                Cutout(max(1, data.image_size // 2)),
                v2.Normalize(list(data.mean), list(data.std)),
            ]
        )
    )


@register_recipe("autoaug_cutout_torchvision")
def autoaug_cutout_torchvision(data: LTData) -> Recipe:
    """``autoaug_cutout`` with torchvision's ``AutoAugment(CIFAR10)`` on tensors: the same
    sub-policies, but random-sign rotation, nearest shears, whole-pixel translations and the
    255-based solarize thresholds (not the official operations; see :class:`CIFAR10Policy`)."""
    return Recipe(
        sample=v2.Compose(
            [
                v2.ToImage(),
                v2.RandomCrop(data.image_size, padding=4),
                v2.RandomHorizontalFlip(),
                v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=128),
                v2.ToDtype(torch.float32, scale=True),
                Cutout(max(1, data.image_size // 2)),
                v2.Normalize(list(data.mean), list(data.std)),
            ]
        )
    )


@register_recipe("rrc_flip")
def rrc_flip(data: LTData) -> Recipe:
    """RandomResizedCrop(size) + horizontal flip: the ImageNet-style standard."""
    return Recipe(
        sample=_sample_pipeline(data, v2.RandomResizedCrop(data.image_size, antialias=True), v2.RandomHorizontalFlip())
    )


@register_recipe("rrc_flip_jitter")
def rrc_flip_jitter(data: LTData) -> Recipe:
    """RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4, 0) (RIDE's ImageNet-LT recipe)."""
    return Recipe(
        sample=_sample_pipeline(
            data,
            v2.RandomResizedCrop(data.image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.0),
        )
    )


@register_recipe("resize_center_crop")
def resize_center_crop(data: LTData) -> Recipe:
    """Resize(size / 0.875) + CenterCrop(size): ImageNet-style evaluation (256 -> 224)."""
    return Recipe(
        sample=_sample_pipeline(
            data,
            v2.Resize(int(data.image_size / 0.875), antialias=True),
            v2.CenterCrop(data.image_size),
            decode_size=int(data.image_size / 0.875),
        )
    )


@register_recipe("resize_center_crop_bicubic")
def resize_center_crop_bicubic(data: LTData) -> Recipe:
    """PIL bicubic Resize(size / crop_pct) + CenterCrop(size), crop_pct 0.875 up to 224 px and 1.0
    above: the evaluation of the timm-based ViT codes (MAE/LiVT ``build_transform``, DeiT-LT's
    Resize(256) + CenterCrop(224)), also for CIFAR upsampled to 224."""
    crop_pct = 0.875 if data.image_size <= 224 else 1.0
    norm = Normalize(data.mean, data.std)

    def batch(images: Tensor, gen: torch.Generator) -> Tensor:
        size = resized_size(*images.shape[-2:], int(data.image_size / crop_pct))
        return norm(center_crop(resize_bicubic(images, size), data.image_size))

    return Recipe(
        batch=batch,
        resizes=True,
        sample=_sample_pipeline(
            data,
            v2.Resize(int(data.image_size / crop_pct), interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop(data.image_size),
            pil=True,
            decode_size=int(data.image_size / crop_pct),
        ),
    )


# ----------------------------------------------------------------------------- ViT recipes (MAE, LiVT, DeiT-LT)
# Per-image PIL pipelines, as the official code runs them (PIL bicubic resampling). In-memory
# datasets hand them uint8 [C, H, W] tensors, converted to PIL (1 channel -> "L", 3 -> "RGB").


def _to_pil(image):
    """A PIL image as it is; a uint8 [C, H, W] tensor as a PIL image."""
    from PIL import Image

    return image if isinstance(image, Image.Image) else v2.functional.to_pil_image(image)


def _posterize_zero_safe(img, bits_to_keep: int, **_):
    """timm's RandAugment posterize, also for 0 bits: magnitude 10 asks for 0 bits, which current
    Pillow rejects (ValueError) and the older Pillow the official code ran on turned into a black image."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def zero_safe_posterize(transform):
    """Swap timm's posterize for :func:`_posterize_zero_safe` in the RandAugment steps of a timm
    ``Compose`` (in place; returns it)."""
    from timm.data.auto_augment import posterize

    for step in getattr(transform, "transforms", ()):
        for op in getattr(step, "ops", ()):
            if op.aug_fn is posterize:
                op.aug_fn = _posterize_zero_safe
    return transform


def _mae_rrc_flip(data: LTData, size: int) -> Recipe:
    norm = Normalize(data.mean, data.std)

    def batch(images: Tensor, gen: torch.Generator) -> Tensor:
        return norm(random_hflip(random_resized_crop(images, size, gen, scale=(0.2, 1.0)), gen))

    return Recipe(
        batch=batch,
        resizes=True,
        sample=_sample_pipeline(
            data,
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(),
            pil=True,
        ),
    )


@register_recipe("mae_rrc_flip")
def mae_rrc_flip(data: LTData) -> Recipe:
    """RandomResizedCrop(size, scale 0.2-1, bicubic) + flip: MAE's (and LiVT's MGP) pretraining recipe."""
    return _mae_rrc_flip(data, data.image_size)


@register_recipe("mae_rrc_flip_128")
def mae_rrc_flip_128(data: LTData) -> Recipe:
    """``mae_rrc_flip`` cropping to 128 px whatever the dataset's size (LiVT's iNat18 pretraining)."""
    return _mae_rrc_flip(data, 128)


def mean_pixel(mean: tuple[float, ...]) -> tuple[int, ...]:
    """A normalisation mean as an 8-bit pixel, rounded as timm's ``img_mean`` hparam is built."""
    return tuple(min(255, round(255 * m)) for m in mean)


# ImageNet's mean pixel (124, 116, 104): the RandAugment fill of PaCo's ImageNet-LT and iNat code,
# which builds it from ImageNet's mean whatever the dataset's normalisation
IMAGENET_FILL = mean_pixel(IMAGENET_MEAN)


def _rrc_jitter_randaug(data: LTData, fill: tuple[int, ...], *before_randaug) -> Recipe:
    """RandomResizedCrop (scale 0.08-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0), the steps
    ``before_randaug``, then timm RandAugment ``rand-n2-m10-mstd0.5`` (translate_const 0.45 * size)
    filling the areas it moves in with ``fill``."""
    from timm.data.auto_augment import rand_augment_transform

    hparams = {"translate_const": int(data.image_size * 0.45), "img_mean": fill if len(fill) > 1 else fill[0]}
    sample = _sample_pipeline(
        data,
        v2.RandomResizedCrop(data.image_size, scale=(0.08, 1.0)),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.4, 0.4, 0.4, 0.0),
        *before_randaug,
        rand_augment_transform("rand-n2-m10-mstd0.5", hparams),
        pil=True,
    )
    return Recipe(sample=zero_safe_posterize(sample))


def _imagenet_fill(data: LTData, recipe: str) -> tuple[int, ...]:
    if len(data.mean) != 3:
        raise ConfigError(f"augmentation recipe {recipe!r} fills with ImageNet's RGB mean pixel: it needs RGB images")
    return IMAGENET_FILL


@register_recipe("rrc_jitter_randaug")
def rrc_jitter_randaug(data: LTData) -> Recipe:
    """RandomResizedCrop (scale 0.08-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0) + timm RandAugment
    ``rand-n2-m10-mstd0.5`` (translate_const 0.45 * size, fill = the dataset mean): the strong
    view of MDCS's ImageNet-LT / Places-LT loaders (the PaCo-derived ``rand_augment_transform`` of
    the official ``data_loader/randaugment.py`` has the same op list and magnitudes as timm's)."""
    return _rrc_jitter_randaug(data, mean_pixel(data.mean))


@register_recipe("rrc_jitter_randaug_imagenet_fill")
def rrc_jitter_randaug_imagenet_fill(data: LTData) -> Recipe:
    """``rrc_jitter_randaug`` filling with ImageNet's mean pixel (124, 116, 104) whatever the
    dataset's mean: the query view of PaCo's ``--aug randcls_sim`` (``augmentation_randncls`` of
    ``paco_lt.py``), on iNat too."""
    return _rrc_jitter_randaug(data, _imagenet_fill(data, "rrc_jitter_randaug_imagenet_fill"))


@register_recipe("rrc_jitter_gray_blur_randaug_imagenet_fill")
def rrc_jitter_gray_blur_randaug_imagenet_fill(data: LTData) -> Recipe:
    """``rrc_jitter_randaug_imagenet_fill`` with grayscale (p 0.2) and Gaussian blur (sigma 0.1-2,
    p 0.5) between the colour jitter and RandAugment: the query view of PaCo's ``--aug
    randclsstack_sim`` (``augmentation_randnclsstack``, its ResNeXt recipes)."""
    fill = _imagenet_fill(data, "rrc_jitter_gray_blur_randaug_imagenet_fill")
    return _rrc_jitter_randaug(data, fill, *_gray_blur())


@register_recipe("randaug_erase")
def randaug_erase(data: LTData) -> Recipe:
    """timm ``create_transform`` training recipe of DeiT / MAE fine-tuning: RandomResizedCrop
    (scale 0.08-1, bicubic) + flip + RandAugment ``rand-m9-mstd0.5-inc1`` + random erasing
    (p 0.25, per-pixel noise), no colour jitter."""
    from timm.data import create_transform

    transform = create_transform(
        input_size=data.image_size,
        is_training=True,
        color_jitter=None,
        auto_augment="rand-m9-mstd0.5-inc1",
        interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        re_count=1,
        mean=tuple(data.mean),
        std=tuple(data.std),
    )
    return Recipe(sample=v2.Compose([_to_pil, zero_safe_posterize(transform)]))


def mixup_from(hp, num_classes: int):
    """timm's ``Mixup`` from a method's ``mixup``, ``cutmix``, ``mixup_prob``, ``mixup_switch_prob``,
    ``mixup_mode`` and ``smoothing`` parameters (the DeiT / MAE fine-tuning recipe; it draws from
    numpy's RNG, which the trainer checkpoints); None when both alphas are 0."""
    from timm.data import Mixup

    if hp.mixup <= 0 and hp.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=hp.mixup,
        cutmix_alpha=hp.cutmix,
        prob=hp.mixup_prob,
        switch_prob=hp.mixup_switch_prob,
        mode=hp.mixup_mode,
        label_smoothing=hp.smoothing,
        num_classes=num_classes,
    )


# ----------------------------------------------------------------------------- contrastive views (MoCo v2 / SimCLR)


class RandomGaussianBlur:
    """PIL ``GaussianBlur(radius=sigma)`` with sigma drawn uniformly from ``sigma`` (MoCo v2's
    ``moco.loader.GaussianBlur``, which PaCo's key views use); sigma comes from torch's generator,
    so the worker's per-image seed fixes it."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, image):
        from PIL import ImageFilter

        lo, hi = self.sigma
        return image.filter(ImageFilter.GaussianBlur(radius=lo + (hi - lo) * float(torch.rand(()))))


def _gray_blur() -> list:
    """RandomGrayscale (p 0.2) + :class:`RandomGaussianBlur` (p 0.5): MoCo v2's steps after the colour jitter."""
    return [v2.RandomGrayscale(p=0.2), v2.RandomApply([RandomGaussianBlur()], p=0.5)]


def _simclr(data: LTData, crop, jitter: tuple[float, float, float, float], jitter_p: float, flip_first: bool) -> Recipe:
    flip = [v2.RandomHorizontalFlip()]
    colour = [v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p), *_gray_blur()]
    steps = [_to_pil, crop, *(flip + colour if flip_first else colour + flip)]
    return Recipe(
        sample=v2.Compose(
            [*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean), list(data.std))]
        )
    )


@register_recipe("simclr_cifar")
def simclr_cifar(data: LTData) -> Recipe:
    """RandomResizedCrop(size, scale 0.2-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8 +
    grayscale p 0.2 + Gaussian blur (sigma 0.1-2) p 0.5: the key view of PaCo's CIFAR code
    (``augmentation_sim_cifar``)."""
    crop = v2.RandomResizedCrop(data.image_size, scale=(0.2, 1.0))
    return _simclr(data, crop, (0.4, 0.4, 0.4, 0.1), 0.8, flip_first=True)


@register_recipe("simclr_imagenet")
def simclr_imagenet(data: LTData) -> Recipe:
    """RandomResizedCrop(size, scale 0.08-1) + ColorJitter(0.4, 0.4, 0.4, 0) always + grayscale p 0.2
    + Gaussian blur (sigma 0.1-2) p 0.5 + flip: the key view of PaCo's ImageNet-LT / iNat code
    (``augmentation_sim``)."""
    crop = v2.RandomResizedCrop(data.image_size, scale=(0.08, 1.0))
    return _simclr(data, crop, (0.4, 0.4, 0.4, 0.0), 1.0, flip_first=False)
