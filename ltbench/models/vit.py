"""Vision Transformers from timm, sized for small images (patch 4 on 28-32 px)."""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from ..registry import register_model


@register_model("vit")
def vit(num_classes: int, in_chans: int = 3, img_size: int = 32, patch_size: int = 4,
        embed_dim: int = 128, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
        drop_path: float = 0.0) -> VisionTransformer:
    """timm VisionTransformer with a class token; size set by the model config."""
    return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                             num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path)
