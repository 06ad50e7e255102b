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
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from .data import BatchTransform, LTData, SampleTransform
from .errors import ConfigError
from .registry import Registry

RECIPES: Registry = Registry("augmentation recipe")
register_recipe = RECIPES.register


@dataclass
class Recipe:
    batch: BatchTransform | None = None
    sample: SampleTransform | None = None


def build_recipes(names: list[str], data: LTData, train: bool = True) -> list[Recipe]:
    """Build one recipe per view; ``default`` means the dataset's train (or eval) recipe."""
    out = []
    for name in names:
        if name == "default":
            name = data.train_augment if train else data.eval_augment
        out.append(RECIPES.get(name)(data))
    if not out:
        raise ConfigError("augment: a stage needs at least one view (e.g. augment=default)")
    return out


# ----------------------------------------------------------------------------- batch pieces

class Normalize:
    """uint8 [B,C,H,W] -> float, scaled to [0, 1] and standardised per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        if self.mean.device != images.device:
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float().div_(255.0) - self.mean) / self.std


def random_pad_crop(images: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Zero-pad by ``pad`` and crop back to the original size at a random offset per image."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(images.device)
    rows = (offsets[0, :, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # [B,H,W,C] -> [B,C,H,W]


def random_hflip(images: Tensor, gen: torch.Generator, p: float = 0.5) -> Tensor:
    flip = (torch.rand(images.shape[0], generator=gen) < p).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_rotate(images: Tensor, degrees: float, gen: torch.Generator) -> Tensor:
    """Rotate each image by a uniform angle in [-degrees, degrees] about its centre (nearest,
    zero fill, no expansion), as torchvision's ``RandomRotation(degrees)``."""
    b = images.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1),
                         torch.stack([sin, cos, torch.zeros(b)], 1)], 1).to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(images.dtype)


def _sample_pipeline(data: LTData, *steps) -> Callable:
    return v2.Compose([v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(data.mean), list(data.std))])


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

    sample = _sample_pipeline(data, v2.RandomCrop(data.image_size, padding=4),
                              v2.RandomHorizontalFlip(), v2.RandomRotation(15))
    return Recipe(batch=batch, sample=sample)


@register_recipe("rrc_flip")
def rrc_flip(data: LTData) -> Recipe:
    """RandomResizedCrop(size) + horizontal flip: the ImageNet-style standard."""
    return Recipe(sample=_sample_pipeline(
        data, v2.RandomResizedCrop(data.image_size, antialias=True), v2.RandomHorizontalFlip()))


@register_recipe("rrc_flip_jitter")
def rrc_flip_jitter(data: LTData) -> Recipe:
    """RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4, 0) (RIDE's ImageNet-LT recipe)."""
    return Recipe(sample=_sample_pipeline(
        data, v2.RandomResizedCrop(data.image_size, antialias=True), v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.4, 0.4, 0.4, 0.0)))


@register_recipe("resize_center_crop")
def resize_center_crop(data: LTData) -> Recipe:
    """Resize(size / 0.875) + CenterCrop(size): ImageNet-style evaluation (256 -> 224)."""
    return Recipe(sample=_sample_pipeline(
        data, v2.Resize(int(data.image_size / 0.875), antialias=True), v2.CenterCrop(data.image_size)))
