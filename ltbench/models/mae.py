"""Masked autoencoder (He et al., CVPR 2022) on timm ViT blocks, and its fine-tuning classifier.

The encoder sees only the kept 25% of the patches; a light decoder gets the encoded tokens plus a
shared mask token at every removed position and predicts the pixels of each patch. The loss is the
mean squared error on the removed patches only, against per-patch normalised pixels
(``norm_pix_loss``). Encoder and decoder use fixed 2-D sin-cos position embeddings. Parameter names
follow the official MAE code (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``,
``decoder_*``, ``mask_token``), so its checkpoints load as they are.

:func:`classifier_from_mae` is the MAE fine-tuning transfer used by LiVT: a global-average-pool ViT
keeps the encoder's patch embedding, class token, position embedding (now learnable, resized
bicubically to a new resolution) and blocks, drops the encoder's final norm, decoder and mask
token, and gets a new ``fc_norm`` and a head initialised with std 2e-5.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from ..registry import register_model
from .vit import resize_pos_embed, sincos_pos_embed_2d, vit

#: encoder parameters that carry over to the classifier (everything else of the MAE is dropped)
ENCODER_KEYS = ("patch_embed.", "blocks.", "cls_token", "pos_embed")


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """[N, C, H, W] -> [N, L, p*p*C]: patches in row-major order, each flattened as (row, col, channel)."""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, patch_size: int, chans: int) -> Tensor:
    """Inverse of :func:`patchify` for square images: [N, L, p*p*C] -> [N, C, H, W]."""
    n, length, _ = x.shape
    p, g = patch_size, int(round(length**0.5))
    if g * g != length:
        raise ValueError(f"{length} patches do not form a square grid")
    x = x.reshape(n, g, g, p, p, chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, chans, g * p, g * p)


def random_masking(x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random ``int(L * (1 - mask_ratio))`` tokens of each sample (per-sample shuffle).

    x: [N, L, D]. Returns the kept tokens [N, len_keep, D] (in shuffled order), the binary mask
    [N, L] (0 kept, 1 removed) and ``ids_restore`` [N, L], the permutation that undoes the shuffle.
    The shuffle is the argsort of uniform noise from torch's global generator, as in MAE.
    """
    n, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :len_keep, None].expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :len_keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def masked_patch_mse(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MAE reconstruction loss: per-patch MSE averaged over the removed patches only.

    pred, target: [N, L, P] (target from :func:`patchify`), mask: [N, L] with 1 = removed. With
    ``norm_pix`` each target patch is standardised, ``(t - mean) / sqrt(var + 1e-6)`` with the
    unbiased variance, as MAE's ``norm_pix_loss``.
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a narrower ViT decoder (``models_mae.MaskedAutoencoderViT``)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size, self.in_chans, self.num_heads, self.mlp_ratio = patch_size, in_chans, num_heads, mlp_ratio
        self.norm_pix_loss = norm_pix_loss
        norm = partial(nn.LayerNorm, eps=1e-6)

        # encoder: a ViT that only sees the kept patches
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        grid = self.patch_embed.grid_size[0]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            sincos_pos_embed_2d(embed_dim, grid, cls_token=True)[None], requires_grad=False
        )  # fixed
        self.blocks = nn.Sequential(
            *[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        )
        self.norm = norm(embed_dim)

        # decoder: every position, mask tokens where patches were removed, predicts pixels
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            sincos_pos_embed_2d(decoder_embed_dim, grid, cls_token=True)[None], requires_grad=False
        )
        self.decoder_blocks = nn.Sequential(
            *[
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE: patch embedding initialised like a Linear layer, tokens N(0, 0.02), Linear layers
        # xavier-uniform with zero bias, LayerNorm weight 1 and bias 0
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_encoder(self, imgs: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the kept patches: latent [N, 1 + len_keep, D], mask [N, L], ids_restore [N, L]."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, mask_ratio)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = self.blocks(torch.cat([cls, x], dim=1))
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Pixel predictions [N, L, p*p*C] for every patch, in the original patch order."""
        x = self.decoder_embed(latent)
        n, kept, dim = x.shape
        mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] + 1 - kept, -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, dim))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        x = self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))
        return x[:, 1:]  # drop the class token

    def forward(self, imgs: Tensor, mask_ratio: float = 0.75) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, pred [N, L, p*p*C], mask [N, L]) for a batch of images."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        loss = masked_patch_mse(pred, patchify(imgs, self.patch_size), mask, self.norm_pix_loss)
        return loss, pred, mask


@register_model("mae_vit")
def mae_vit(
    in_chans: int = 3,
    img_size: int = 224,
    patch_size: int = 16,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    mlp_ratio: float = 4.0,
    decoder_embed_dim: int = 512,
    decoder_depth: int = 8,
    decoder_num_heads: int = 16,
    norm_pix_loss: bool = True,
) -> MaskedAutoencoderViT:
    """MAE; the defaults are ``mae_vit_base_patch16`` (ViT-B/16 encoder, 512-wide 8-block decoder)."""
    return MaskedAutoencoderViT(
        img_size,
        patch_size,
        in_chans,
        embed_dim,
        depth,
        num_heads,
        mlp_ratio,
        decoder_embed_dim,
        decoder_depth,
        decoder_num_heads,
        norm_pix_loss,
    )


def classifier_from_mae(
    mae: MaskedAutoencoderViT, num_classes: int, img_size: int, drop_path: float = 0.0
) -> VisionTransformer:
    """A global-average-pool ViT classifier initialised from the MAE encoder (MAE fine-tuning).

    Kept: ``patch_embed``, ``cls_token``, ``pos_embed`` (learnable from here on, bicubically
    resized when ``img_size`` gives another patch grid) and ``blocks``. Dropped: the encoder's final
    ``norm``, the decoder and the mask token. New: ``fc_norm`` (weight 1, bias 0) and ``head``
    (weight trunc-normal with std 2e-5, bias 0). ``drop_path`` is the stochastic depth of the
    fine-tuning (pretraining has none).
    """
    embed_dim = mae.cls_token.shape[-1]
    model = vit(
        num_classes,
        in_chans=mae.in_chans,
        img_size=img_size,
        patch_size=mae.patch_size,
        embed_dim=embed_dim,
        depth=len(mae.blocks),
        num_heads=mae.num_heads,
        mlp_ratio=mae.mlp_ratio,
        drop_path=drop_path,
        global_pool="avg",
    )
    encoder = {k: v for k, v in mae.state_dict().items() if k.startswith(ENCODER_KEYS)}
    encoder["pos_embed"] = resize_pos_embed(encoder["pos_embed"], model.patch_embed.grid_size[0])
    missing, unexpected = model.load_state_dict(encoder, strict=False)
    new = {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    if set(missing) != new or unexpected:
        raise RuntimeError(f"MAE -> ViT transfer: missing {missing}, unexpected {unexpected}")
    nn.init.trunc_normal_(model.head.weight, std=2e-5)
    nn.init.zeros_(model.head.bias)
    return model.to(mae.cls_token.device)
