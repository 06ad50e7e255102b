"""LiVT (Xu et al., CVPR 2023): a plain ViT trained from scratch on long-tailed data only.

Two stages in one run, both on the long-tailed training set:

1. ``mgp`` -- Masked Generative Pretraining, which is MAE (He et al., 2022): the encoder sees 25%
   of the patches, a light decoder reconstructs the per-patch normalised pixels of the others.
2. ``bft`` -- Balanced Fine-Tuning: the encoder becomes a global-average-pool ViT classifier
   (:func:`~ltbench.models.mae.classifier_from_mae`), trained with Mixup/CutMix soft targets and
   Bal-BCE: binary cross-entropy whose logits get the training prior's log-odds
   ``tau * log(pi_j / (1 - pi_j))`` added, in training only; prediction uses the raw logits.

Official code: XuZhengzhuo/LiVT @ 68546ef (``util/loss.py``, ``main_pretrain.py``,
``main_finetune.py``, ``models/mae.py``, ``util/lr_decay.py``). The paper's full text was not
available, so comments cite the official files rather than equation numbers.

Presets: ``paper`` reproduces the shipped training logs where they exist (ImageNet-LT, iNat18);
``paper_readme`` is the README's hyper-parameter table, ``paper_args`` the ImageNet-LT fine-tuning
``args.txt`` (another run than its log). CIFAR-LT presets are an extension at the official code's
224 px. Evaluation is PIL-bicubic resize + centre crop (``resize_center_crop_bicubic``).

``tau`` is a real parameter here, but the official ``BCE_loss`` never reads its ``bal_tau``: the
released code always runs Bal-BCE with tau = 1 (the default), whatever the README lists
(1.05 for Places-LT: ``paper`` follows the README, ``paper_code`` keeps tau = 1). With Mixup and
CutMix both off the official script stops ("No loss setting!"); here the losses then take integer
labels as label-smoothed one-hot targets, as the official ``BCE_loss`` itself would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.augment import mixup_from
from ltbench.config import Config, OptimConfig
from ltbench.data import Batch
from ltbench.errors import ConfigError
from ltbench.filelists import INAT_MEAN, INAT_STD
from ltbench.losses import BalancedCE, class_balanced_weights, class_prior, log_prior, logit_adjust, soft_targets
from ltbench.method import DataInfo, Method, StepContext
from ltbench.models import create_model
from ltbench.models.mae import classifier_from_mae
from ltbench.models.vit import VIT_NO_WEIGHT_DECAY, vit_layer_id
from ltbench.optim import param_groups
from ltbench.precision import official_precision
from ltbench.recipes import overlay
from ltbench.registry import register_method

# ----------------------------------------------------------------------------- losses


def sigmoid_prior_log_odds(counts) -> Tensor:
    """log pi_j - log(1 - pi_j): the logit whose sigmoid is the training prior pi_j."""
    prior = class_prior(counts)
    return log_prior(counts) - torch.log(1 - prior)


class BinaryCrossEntropy(nn.Module):
    """Sigmoid BCE summed over classes, averaged over the batch (``util/loss.py`` ``BCE_loss``).

    Inputs: logits z [B, C]; targets t [B, C] (soft, e.g. Mixup/CutMix, used unthresholded) or
    integer labels [B] (label-smoothed one-hot with ``smoothing``).

        L = C * mean_{i,j} w_j * BCE(z_ij + b_j, t_ij)
          = (1/B) sum_i sum_j -w_j [t_ij log s(z_ij + b_j) + (1 - t_ij) log(1 - s(z_ij + b_j))]

    with s the sigmoid, offsets b (``offset``, default 0) and class weights w (``weight``,
    default 1). Plain BCE has neither; the subclasses below set one of them.
    """

    def __init__(
        self, num_classes: int, smoothing: float = 0.0, offset: Tensor | None = None, weight: Tensor | None = None
    ) -> None:
        super().__init__()
        self.num_classes, self.smoothing = num_classes, smoothing
        self.register_buffer("offset", offset, persistent=False)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()  # targets, offsets and weights in fp32, also under autocast
        t = soft_targets(target, self.num_classes, self.smoothing).float()
        z = logits if self.offset is None else logit_adjust(logits, self.offset)
        return logits.shape[-1] * F.binary_cross_entropy_with_logits(z, t, weight=self.weight)


class BalancedBCE(BinaryCrossEntropy):
    """Bal-BCE, LiVT's loss (``BCE_loss(type='Bal')``): BCE on logits shifted by the prior's log-odds.

    Inputs as :class:`BinaryCrossEntropy`; ``counts`` are the training class counts n_j.

        pi_j = n_j / sum_k n_k,   z~_ij = z_ij + tau * (log pi_j - log(1 - pi_j))
        L = C * mean_{i,j} BCE(z~_ij, t_ij)

    The shift is applied in training only (prediction uses the raw logits). The official code
    hard-codes tau = 1 (its ``bal_tau`` option does not reach this loss).
    """

    def __init__(self, counts, tau: float = 1.0, smoothing: float = 0.0) -> None:
        super().__init__(len(counts), smoothing, offset=tau * sigmoid_prior_log_odds(counts))


class ClassBalancedBCE(BinaryCrossEntropy):
    """Class-balanced BCE (``BCE_loss(type='CB')``, Cui et al. 2019), an ablation of LiVT.

    Inputs as :class:`BinaryCrossEntropy`. Each class's BCE term is weighted by its effective-number
    weight w_j = (1 - beta) / (1 - beta^{n_j}), normalised to sum C (beta 0.9999 officially):

        L = C * mean_{i,j} w_j * BCE(z_ij, t_ij)
    """

    def __init__(self, counts, beta: float = 0.9999, smoothing: float = 0.0) -> None:
        super().__init__(len(counts), smoothing, weight=class_balanced_weights(counts, beta))


#: ``method.loss`` -> the BFT loss, built from the parameters and the training class counts
LOSSES: dict[str, Callable[[LiVTParams, np.ndarray], nn.Module]] = {
    "bal_bce": lambda hp, counts: BalancedBCE(counts, hp.tau, hp.smoothing),
    "bce": lambda hp, counts: BinaryCrossEntropy(len(counts), hp.smoothing),
    "cb_bce": lambda hp, counts: ClassBalancedBCE(counts, hp.cb_beta, hp.smoothing),
    "bal_ce": lambda hp, counts: BalancedCE(counts, hp.tau, hp.smoothing),
}


# ----------------------------------------------------------------------------- parameters


@dataclass
class LiVTParams:
    """``method.*`` of LiVT: MAE pretraining (mgp) and balanced fine-tuning (bft)."""

    mask_ratio: float = 0.75  # fraction of patches removed in MGP
    norm_pix_loss: bool = True  # reconstruct per-patch normalised pixels (always on officially)
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mgp_img_size: int = 0  # MGP input size; 0 = the dataset's (LiVT pretrains iNat18 at 128)
    loss: str = field(default="bal_bce", metadata={"choices": tuple(LOSSES)})
    tau: float = 1.0  # prior strength of bal_bce / bal_ce (official Bal-BCE: always 1)
    cb_beta: float = 0.9999  # effective-number beta of cb_bce
    smoothing: float = 0.0  # label smoothing of the (Mixup) targets
    mixup: float = 0.8  # Mixup alpha (0 and cutmix 0: no mixing, integer targets)
    cutmix: float = 1.0  # CutMix alpha
    mixup_prob: float = 1.0  # probability of mixing a batch at all
    mixup_switch_prob: float = 0.5  # probability of CutMix instead of Mixup
    mixup_mode: str = field(default="batch", metadata={"choices": ("batch", "pair", "elem")})


# ----------------------------------------------------------------------------- the method


@register_method("livt")
class LiVT(Method):
    """LiVT: MAE pretraining (mgp) + Bal-BCE fine-tuning (bft) of a ViT from scratch."""

    Params = LiVTParams
    stage_names = ("mgp", "bft")

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        hp, m = cfg.method, cfg.model
        if m.arch != "vit":
            raise ConfigError(f"livt trains a ViT (model.arch=vit), got model.arch={m.arch!r}")
        self.mae = create_model(
            "mae_vit",
            in_chans=info.in_chans,
            img_size=hp.mgp_img_size or info.image_size,
            patch_size=m.patch_size,
            embed_dim=m.embed_dim,
            depth=m.depth,
            num_heads=m.num_heads,
            mlp_ratio=m.mlp_ratio,
            decoder_embed_dim=hp.decoder_embed_dim,
            decoder_depth=hp.decoder_depth,
            decoder_num_heads=hp.decoder_num_heads,
            norm_pix_loss=hp.norm_pix_loss,
        )
        self.vit: nn.Module | None = None  # the BFT classifier, built from the encoder
        self.criterion = LOSSES[hp.loss](hp, info.train_counts)
        self.mixup = mixup_from(hp, info.num_classes)  # as main_finetune.py

    def evaluates_after(self, stage: str) -> bool:
        return stage == "bft"  # MGP has no classifier

    def enter_stage(self, stage: str) -> None:
        if stage == "bft":  # MAE encoder -> ViT classifier; decoder, mask token and final norm dropped
            self.vit = classifier_from_mae(
                self.mae, self.info.num_classes, self.info.image_size, self.cfg.model.drop_path
            )
            self.mae = None

    def param_groups(self, stage: str, cfg: OptimConfig) -> list[dict]:
        if stage == "mgp":  # timm add_weight_decay: no decay on biases and 1-D parameters only
            return param_groups(self.mae.named_parameters(), cfg)
        num_layers = len(self.vit.blocks) + 1  # util/lr_decay.py: scale = decay ** (num_layers - id)
        return param_groups(
            self.vit.named_parameters(),
            cfg,
            no_decay=VIT_NO_WEIGHT_DECAY,
            layer_id=partial(vit_layer_id, num_layers=num_layers),
            num_layers=num_layers,
        )

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        if ctx.stage == "mgp":
            loss, _, _ = self.mae(batch.x, self.hp.mask_ratio)  # masked-patch MSE (models/mae.py)
            return {"loss": loss}
        x, y = batch.x, batch.y
        if self.mixup is not None:
            x, y = self.mixup(x, y)  # soft targets [B, C]
        return {"loss": self.criterion(self.vit(x), y)}

    def predict(self, x: Tensor) -> Tensor:
        if self.vit is None:
            raise RuntimeError("livt has no classifier before the bft stage")
        return self.vit(x)  # raw logits: the Bal-BCE prior shift is a training-only margin


# ----------------------------------------------------------------------------- recipes


def _mgp(*, epochs: int, batch: int, accum: int, warmup: int, augment: str = "mae_rrc_flip") -> dict:
    """MGP stage: AdamW(0.9, 0.95), wd 0.05 (not on biases / 1-D), blr 1.5e-4 per 256 images,
    per-step warmup + half-cycle cosine to 0 (``main_pretrain.py``)."""
    return {
        "epochs": epochs,
        "batch_size": batch,
        "accum_steps": accum,
        "drop_last": True,
        "augment": [augment],
        "optim": {
            "name": "adamw",
            "lr": 1.5e-4,
            "lr_ref_batch": 256,
            "betas": (0.9, 0.95),
            "weight_decay": 0.05,
            "no_decay_1d": True,
        },
        "schedule": {"name": "cosine", "per": "step", "warmup_epochs": warmup, "min_lr": 0.0},
    }


def _bft(
    *, epochs: int, batch: int, accum: int, warmup: int, beta2: float, layer_decay: float, blr: float = 1e-3
) -> dict:
    """BFT stage: AdamW(0.9, beta2), wd 0.05 (not on 1-D, pos_embed, cls_token), ``blr`` per 256
    images, layer decay, per-step warmup + half-cycle cosine to 1e-6 (``main_finetune.py``)."""
    return {
        "epochs": epochs,
        "batch_size": batch,
        "accum_steps": accum,
        "drop_last": True,
        "augment": ["randaug_erase"],
        "optim": {
            "name": "adamw",
            "lr": blr,
            "lr_ref_batch": 256,
            "betas": (0.9, beta2),
            "weight_decay": 0.05,
            "no_decay_1d": True,
            "layer_decay": layer_decay,
        },
        "schedule": {"name": "cosine", "per": "step", "warmup_epochs": warmup, "min_lr": 1e-6},
    }


VIT_B16 = {
    "arch": "vit",
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "patch_size": 16,
    "mlp_ratio": 4.0,
    "drop_path": 0.1,
}

# per-dataset normalisation of util/datasets.py and main_pretrain.py (Places-LT: ImageNet's, the default)
NORM_INLT = {"mean": (0.479672, 0.457713, 0.407721), "std": (0.278976, 0.271203, 0.286062)}
NORM_INAT = {"mean": INAT_MEAN, "std": INAT_STD}
# evaluation of main_finetune.build_transform: PIL bicubic Resize(size / crop_pct) + CenterCrop(size),
# crop_pct 0.875 up to 224 px and 1.0 above
EVAL = {"augment": "resize_center_crop_bicubic"}

# --- the logged runs (`paper`). Global batch = args.txt's per-GPU batch x GPUs; the accumulation is
# what the log's own lr ramp implies (mean lr of epoch e of the warmup = peak (e + (1 - a/N)/2) / W for
# N data iterations per epoch and a accumulation steps: the difference of two epochs gives the peak,
# the first epoch N / a, the optimiser steps per epoch).
# exp/pretrain/ImageNet-LT/vit_base_224/log.txt: 800 epochs (its args.txt says 400), +1.5e-5 per
# warmup epoch over 40 = peak 6.0e-4 (blr 1.5e-4 x 1024 / 256), 113 steps per epoch on 115,846
# images = effective batch 1024: 64 x 4 GPUs x 4 accumulation (args.txt: 16, i.e. 4096, not logged).
MGP_INLT_LOG = _mgp(epochs=800, batch=256, accum=4, warmup=40)
# exp/finetune/ImageNet-LT/vit_base_224/log.txt (best 60.874 = the README's 60.9): +2.0e-4 per warmup
# epoch over 5 = peak 1.0e-3, 226 steps per epoch = effective batch 512 (64 x 4 GPUs x 2), so
# blr 5e-4; 100 epochs, last-epoch lr 1.1e-6 (min lr 1e-6). Not visible in the log, from its
# args.txt: AdamW beta2 0.999, layer decay 0.75, drop path 0.1, label smoothing 0.1.
BFT_INLT_LOG = _bft(epochs=100, batch=256, accum=2, warmup=5, beta2=0.999, layer_decay=0.75, blr=5e-4)
# iNat18: the logs agree with the args.txt. exp/pretrain/iNat18/vit_base_128: 800 epochs at 128 px,
# 256 x 3 GPUs x 4 = 3072, peak 1.8e-3 (+4.5e-5 per warmup epoch over 40); exp/finetune/iNat18/
# vit_base_224: 64 x 4 GPUs x 8 = 2048, peak 8e-3 (+1.6e-3 per warmup epoch over 5), beta2 0.999,
# layer decay 0.65, drop path 0.1, smoothing 0.0 (args.txt).
MGP_INAT_LOG = _mgp(epochs=800, batch=768, accum=4, warmup=40, augment="mae_rrc_flip_128")
BFT_INAT_LOG = _bft(epochs=100, batch=256, accum=8, warmup=5, beta2=0.999, layer_decay=0.65)

# --- README hyper.png columns (`paper_readme`): MGP 800 epochs (40 warmup), effective batch 4096
# (256 x 16); BFT effective batch 1024 (256 x 4), AdamW beta2 0.99, layer decay 0.75, warmup 10
# (Places-LT: 30 epochs, warmup 5), drop path 0.1 / 0.2 (iNat18) / 0.1, Bal-BCE tau 1 / 1 / 1.05.
# Label smoothing is not in the README: the shipped args.txt give 0.1 (ImageNet-LT) and 0.0 (iNat18);
# for Places-LT the released launcher passes none, so main_finetune's default 0.0 applies [unverified].
MGP_README = _mgp(epochs=800, batch=256, accum=16, warmup=40)
INLT_README = {
    "model": VIT_B16,
    "method": {"smoothing": 0.1},
    "data": NORM_INLT,
    "eval": EVAL,
    "stages": {"mgp": MGP_README, "bft": _bft(epochs=100, batch=256, accum=4, warmup=10, beta2=0.99, layer_decay=0.75)},
}
INAT_README = {
    "model": {**VIT_B16, "drop_path": 0.2},
    "method": {"smoothing": 0.0, "mgp_img_size": 128},
    "data": NORM_INAT,
    "eval": EVAL,
    "stages": {
        "mgp": _mgp(epochs=800, batch=256, accum=16, warmup=40, augment="mae_rrc_flip_128"),
        "bft": _bft(epochs=100, batch=256, accum=4, warmup=10, beta2=0.99, layer_decay=0.75),
    },
}
# Places-LT has README numbers only (no shipped args or logs). The README's tau = 1.05 needs
# ltbench's Bal-BCE: the released BCE_loss ignores bal_tau, so the code runs tau = 1 (`paper_code`).
PLACES_README = {
    "model": VIT_B16,
    "method": {"smoothing": 0.0, "tau": 1.05},
    "eval": EVAL,
    "stages": {"mgp": MGP_README, "bft": _bft(epochs=30, batch=256, accum=4, warmup=5, beta2=0.99, layer_decay=0.75)},
}

# CIFAR-LT (extension: no CIFAR recipe, args or log was published): ViT-B/16 at 224 px, as the
# official build_dataset upsamples CIFAR images (RandomResizedCrop to input_size 224, resizing
# evaluation) -- data.image_size=224 -- with the ImageNet-LT logged recipe; label smoothing 0.0,
# main_finetune's default (Trainer.finetune does not pass one). CIFAR mean/std are the dataset's.
CIFAR_224 = {
    "model": VIT_B16,
    "method": {"smoothing": 0.0},
    "data": {"image_size": 224},
    "eval": EVAL,
    "stages": {"mgp": MGP_INLT_LOG, "bft": BFT_INLT_LOG},
}

PAPER_LOG = {
    "imagenet_lt": {
        "model": VIT_B16,
        "method": {"smoothing": 0.1},
        "data": NORM_INLT,
        "eval": EVAL,
        "stages": {"mgp": MGP_INLT_LOG, "bft": BFT_INLT_LOG},
    },
    "inat2018": {
        "model": VIT_B16,
        "method": {"smoothing": 0.0, "mgp_img_size": 128},
        "data": NORM_INAT,
        "eval": EVAL,
        "stages": {"mgp": MGP_INAT_LOG, "bft": BFT_INAT_LOG},
    },
    "places_lt": PLACES_README,
    "cifar10_lt": CIFAR_224,
    "cifar100_lt": CIFAR_224,
}

# exp/finetune/ImageNet-LT/vit_base_224/args.txt (`paper_args`), which ends "Final Best Acc: 60.34%":
# another run than its log. BFT 64 x 4 GPUs x 8 = 2048, blr 1e-3 (lr 0.008); MGP from
# exp/pretrain/ImageNet-LT/vit_base_224/args.txt, 64 x 4 x 16 = 4096 (lr 0.0024), 800 epochs as logged.
PAPER_ARGS = {
    "imagenet_lt": {
        **PAPER_LOG["imagenet_lt"],
        "stages": {
            "mgp": MGP_README,
            "bft": _bft(epochs=100, batch=256, accum=8, warmup=5, beta2=0.999, layer_decay=0.75),
        },
    },
}

# Fashion-MNIST-LT on 2 CPU cores: the small ViT of `ce --preset cpu_vit` (embed 128, depth 4, 4
# heads, patch 7 on 28 px: 16 tokens, 4 of them visible to the MGP encoder). BFT has that CE row's
# budget (30 epochs, batch 128, peak lr 1e-3 = blr 2e-3, warmup + cosine, the dataset's
# pad-crop-flip) with Mixup/CutMix and Bal-BCE as in the paper. So that MGP contributes within the
# budget: batches of 32 (77 steps per epoch instead of 19), a 1-block 64-wide decoder (the 25%
# visible tokens make an MGP step cheap) and the same pad-crop-flip in both stages. Chosen on the
# val split (seed 0, val top-1): BFT with the paper's RandAugment + erasing 48.0 against 57.5 with
# pad-crop-flip, which 28-px images at this budget underfit; layer decay 0.75 (the paper's) 60.0
# against 57.5 with 0.9. Those choices were made with patch 4 (49 tokens), which the leaderboard's
# hour on 2 cores cannot afford; not re-tuned at patch 7. The Bal-BCE-only ablation is
# `--set stages.mgp.epochs=0` (the same fine-tuning).
CPU_FMNIST = {
    "model": {
        "arch": "vit",
        "embed_dim": 128,
        "depth": 4,
        "num_heads": 4,
        "patch_size": 7,
        "mlp_ratio": 4.0,
        "drop_path": 0.1,
    },
    "method": {"decoder_embed_dim": 64, "decoder_depth": 1, "decoder_num_heads": 4},
    "stages": {
        "mgp": {
            "epochs": 30,
            "batch_size": 32,
            "accum_steps": 1,
            "augment": ["pad_crop_flip"],
            "optim": {"lr": 4e-3},  # peak 5e-4 at batch 32
            "schedule": {"warmup_epochs": 2},
        },
        "bft": {
            "epochs": 30,
            "batch_size": 128,
            "accum_steps": 1,
            "augment": ["pad_crop_flip"],
            "optim": {"lr": 2e-3, "betas": (0.9, 0.999), "layer_decay": 0.75},
            "schedule": {"warmup_epochs": 2},
        },
    },
}

# The full board (a GPU's budget): the cpu recipe above at the CIFAR extension's epoch counts, those of
# the ImageNet-LT logs (MGP 800 epochs with 40 warmup, BFT 100 with 5), and its label smoothing 0.0.
FULL_FMNIST = overlay(
    CPU_FMNIST,
    method={"smoothing": 0.0},
    stages={
        "mgp": {"epochs": 800, "schedule": {"warmup_epochs": 40}},
        "bft": {"epochs": 100, "schedule": {"warmup_epochs": 5}},
    },
)

SMOKE = {
    "model": {"arch": "vit", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4, "drop_path": 0.1},
    "method": {"decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2},
    "stages": {
        "mgp": {
            "epochs": 1,
            "batch_size": 32,
            "accum_steps": 1,
            "optim": {"lr": 1.5e-3},
            "schedule": {"warmup_epochs": 0},
        },
        "bft": {"epochs": 2, "batch_size": 32, "accum_steps": 1, "schedule": {"warmup_epochs": 1}},
    },
}

LiVT.defaults = {"model": VIT_B16, "stages": PAPER_LOG["imagenet_lt"]["stages"]}  # ViT-B/16, ImageNet-LT log
LiVT.presets = {
    "paper": PAPER_LOG,  # the logged runs (ImageNet-LT, iNat18), README (Places-LT), CIFAR extension
    "paper_readme": {"imagenet_lt": INLT_README, "inat2018": INAT_README, "places_lt": PLACES_README},
    "paper_args": PAPER_ARGS,  # ImageNet-LT fine-tuning args.txt of another run than its log
    "paper_code": {"places_lt": {**PLACES_README, "method": {"smoothing": 0.0, "tau": 1.0}}},  # released tau
    "cpu": {"*": CPU_FMNIST},  # tuned on fmnist_lt; the same recipe serves any small dataset
    "full": {"fmnist_lt": FULL_FMNIST},
    "smoke": {"*": SMOKE},
}

# precision of the official code: engine_pretrain.py and engine_finetune.py train under
# torch.cuda.amp.autocast() with the NativeScaler (fp16), and engine_finetune.evaluate autocasts too
official_precision(LiVT.presets, "fp16")
