"""The arithmetic a run trains and evaluates in: ``train.precision`` / ``eval.precision``.

Precision is part of a paper's recipe: RIDE, MDCS, logit adjustment and LDAM-DRW (+ SAM) train in
fp32; LiVT (MAE), DeiT-LT and SHIKE train with fp16 autocast and a GradScaler. ``fp16`` and
``bf16`` autocast the forward pass (on the CPU too: bf16 CPU autocast is how the test suite runs
the mixed-precision path); only fp16 needs loss scaling. ``auto`` is for new recipes: bf16 on a
GPU that supports it, else fp16 on a GPU, and fp32 on the CPU. TF32 is set explicitly (off: fp32
means fp32, as on the GPUs the official codes ran on) and recorded in run.json.
"""

from __future__ import annotations

import contextlib

import torch

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32`` | ``fp16`` | ``bf16`` for a configured precision (``auto`` decided by the device)."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def set_tf32(enabled: bool = False) -> dict:
    """Set TF32 for CUDA matmuls and cuDNN convolutions explicitly; returns the settings in force."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return tf32_settings()


def tf32_settings() -> dict:
    return {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def official_precision(presets: dict, train: str, evaluate: str = "train", prefix: str = "paper") -> None:
    """Set ``train.precision`` (and ``eval.precision``) in every dataset recipe of the presets
    named ``prefix*``: the precision of the official code those recipes reproduce. Each recipe is
    copied, never changed in place (recipes share dicts with other presets)."""
    for name, table in list(presets.items()):
        if name.startswith(prefix):
            presets[name] = {
                dataset: {
                    **recipe,
                    "train": {**recipe.get("train", {}), "precision": train},
                    "eval": {**recipe.get("eval", {}), "precision": evaluate},
                }
                for dataset, recipe in table.items()
            }
