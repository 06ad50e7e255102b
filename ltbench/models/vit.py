"""Vision Transformers from timm, and the ViT pieces shared by the ViT methods (LiVT, DeiT-LT).

- ``vit``: timm ``VisionTransformer`` sized by the model config (patch 4 on 28-32 px by default);
  ``global_pool="avg"`` gives the MAE/LiVT classifier (mean of the patch tokens, then ``fc_norm``).
- ``deit_distilled``: timm's distilled DeiT (class and distillation tokens, two heads), built by
  ``timm.create_model`` and sized by the model config (DeiT-LT's student).
- ``sincos_pos_embed_2d``: MAE's fixed 2-D sine-cosine position embedding.
- ``resize_pos_embed``: bicubic resizing of a position embedding over its patch grid, used when a
  pretrained ViT is fine-tuned at another resolution (MAE/DeiT ``interpolate_pos_embed``).
- ``vit_layer_id`` and ``VIT_NO_WEIGHT_DECAY``: layer ids for layer-wise lr decay (BEiT) and the
  parameters that never get weight decay, for :func:`ltbench.optim.param_groups`.
"""

from __future__ import annotations

import math

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from ..registry import register_model
from .heads import fp32_head

#: token parameters that are never weight-decayed (timm's ``VisionTransformer.no_weight_decay``)
VIT_NO_WEIGHT_DECAY = frozenset({"pos_embed", "cls_token", "dist_token"})


@register_model("vit")
def vit(
    num_classes: int,
    in_chans: int = 3,
    img_size: int = 32,
    patch_size: int = 4,
    embed_dim: int = 128,
    depth: int = 4,
    num_heads: int = 4,
    mlp_ratio: float = 4.0,
    drop_path: float = 0.0,
    global_pool: str = "token",
) -> VisionTransformer:
    """timm VisionTransformer with a class token; size set by the model config.

    ``global_pool="token"`` classifies the final-normed class token; ``"avg"`` averages the patch
    tokens (class token excluded) and normalises them with ``fc_norm`` instead of the final norm.
    """
    net = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        drop_path_rate=drop_path,
        global_pool=global_pool,
    )
    fp32_head(net.head)  # fp32 under autocast
    return net


@register_model("deit_distilled")
def deit_distilled(
    num_classes: int,
    in_chans: int = 3,
    img_size: int = 224,
    patch_size: int = 16,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    mlp_ratio: float = 4.0,
    drop_path: float = 0.0,
) -> VisionTransformerDistilled:
    """timm ``VisionTransformerDistilled`` (DeiT, Touvron et al. 2021): tokens [CLS, DIST, patches],
    a learnable position embedding for all of them, ``head`` on the final-normed CLS token and
    ``head_dist`` on the DIST token. The defaults are DeiT-B/16 at 224 px; the model config sizes
    it (``timm.create_model`` lets keyword arguments override the named variant's sizes)."""
    net = timm.create_model(
        "deit_base_distilled_patch16_224",
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        drop_path_rate=drop_path,
    )
    fp32_head(net.head)  # fp32 under autocast
    fp32_head(net.head_dist)
    return net


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = False) -> Tensor:
    """Fixed 2-D sine-cosine position embedding [grid_size**2 (+1), embed_dim] (MAE, MoCo v3).

    Token ``k = row * grid_size + col``. The first half of the channels encodes the column and the
    second half the row, each as ``[sin(pos * w_i), cos(pos * w_i)]`` with
    ``w_i = 10000 ** (-i / (embed_dim / 4))``, i < embed_dim / 4. With ``cls_token`` a zero row is
    prepended for the class token. Computed in float64 and returned as float32, as MAE does.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for a 2-D sin-cos embedding, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.divmod(np.arange(grid_size * grid_size, dtype=np.float64), grid_size)

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos, omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    emb = np.concatenate([encode(cols), encode(rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


def resize_pos_embed(pos_embed: Tensor, new_grid: int, num_prefix_tokens: int = 1) -> Tensor:
    """Resize a [1, prefix + g*g, D] position embedding to a ``new_grid`` x ``new_grid`` patch grid.

    The prefix tokens (class, distillation) are kept as they are; the patch part is resized with
    bicubic interpolation (``align_corners=False``, no antialiasing), as MAE's and DeiT's
    ``interpolate_pos_embed`` do when fine-tuning at a new resolution.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_grid = math.isqrt(grid.shape[1])
    if old_grid * old_grid != grid.shape[1]:
        raise ValueError(f"position embedding of {grid.shape[1]} patch tokens is not a square grid")
    if old_grid == new_grid:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(-1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat([prefix, grid], dim=1)


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer of a ViT parameter for layer-wise lr decay (BEiT, MAE ``get_layer_id_for_vit``).

    ``name`` is relative to the ViT. Class token, position and patch embedding are layer 0,
    ``blocks.i`` is layer i + 1, everything after the blocks (norms, head) is ``num_layers``
    (= depth + 1), so with :func:`ltbench.optim.param_groups` the head keeps the full lr and
    block i gets ``decay ** (depth - i)``.
    """
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers
