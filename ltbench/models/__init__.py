"""Backbones shared by every method, built by name: ``create_model("resnet32", num_classes=10)``.

``create_model`` passes each factory only the keyword arguments its signature declares, so one
``ModelConfig`` serves ResNets and ViTs alike.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from torch import nn

from ..registry import MODELS, register_model
from . import heads, mae, multi_expert, resnet_cifar, resnet_imagenet, vit  # noqa: F401  (registers the backbones)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with the keyword arguments it accepts."""
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return factory(**kwargs)


def model_kwargs(model_cfg: Any, **extra: Any) -> dict[str, Any]:
    """The ``ModelConfig`` fields (except ``arch``) plus ``extra`` (num_classes, in_chans, img_size)."""
    fields = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(model_cfg) if f.name != "arch"}
    return {**fields, **extra}


__all__ = ["create_model", "model_kwargs", "register_model", "MODELS"]
