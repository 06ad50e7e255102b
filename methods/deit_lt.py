"""DeiT-LT (Rangwani et al., CVPR 2024): a distilled ViT whose DIST token learns the tail from a
CNN teacher trained on the same long-tailed data.

Reference: the official code, val-iisc/DeiT-LT @ bc36970 (``losses.DistillationLoss``, ``main.py``,
``engine.train_one_epoch`` / ``evaluate``, ``samplers.RASampler``, ``arguments.py``, ``sh/*.sh``),
and the project page's loss formulas (the paper's full text was not available).

- **Teacher**: an ``ldam_drw`` run with SAM (LDAM-DRW + SAM, Rangwani et al. 2022) on the same
  data, or with ``method.teacher=paco`` a ``paco`` run (PaCo + SAM; distilled: its supervised
  classifier on the query encoder's features), declared by :meth:`DeiTLT.requires` and trained
  once, frozen, shared by every student.
  ``method.teacher_checkpoint`` uses a finished checkpoint instead (e.g. a released teacher).
- **Student**: timm's distilled DeiT (:func:`~ltbench.models.vit.deit_distilled`): a CLS head learns
  the (Mixup/CutMix) labels, a DIST head learns the teacher's argmax on the same mixed, augmented
  images, which are out of the teacher's distribution (:class:`DeiTLTLoss`).
- **DRW inside the one stage**: after epoch K the DIST term becomes class-balanced by the teacher's
  label, and on CIFAR Mixup/CutMix stop (``--no-mixup-drw``).
- **Prediction**: the mean of the CLS and DIST logits; each head alone is reported too.

Normalisation: the student normalises with ImageNet's mean/std on every dataset (``datasets.py``),
the teacher was trained with its own statistics (Saddle-LongTail: CIFAR's on CIFAR, ImageNet's on
ImageNet-LT, iNat's on iNat, ``datasets/ina2018.py``), and ``engine.py`` hands the teacher the
student's batch as it is. So on CIFAR and iNat the official teacher labels images normalised with
statistics it was not trained on; on ImageNet-LT the two agree. ``paper`` does as the official code
(``method.teacher_input=student``); ``method.teacher_input=own`` (preset ``paper_teacher_norm``)
re-standardises the batch to the teacher's own statistics before the teacher sees it.

Harness policy: the official code evaluates the test set every epoch and reports its best epoch
(``_best_checkpoint.pth`` by ``acc1_avg``); ltbench evaluates the last epoch (``eval.selection``).

Not carried over: the official model EMA (kept but never evaluated), the unused soft-distillation,
BCE, multi-crop and TransMix options. The released numbers use PaCo+SAM teachers, whose training
code is in neither repository; ``paper`` trains the LDAM-DRW+SAM teacher of the project page's "1"
rows, ``paper_paco`` a PaCo+SAM teacher (``paco --preset paper_sam``) for the headline "2" rows
(both are in ``results/published.csv``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.augment import mixup_from
from ltbench.config import FILE, Config, resolve_config, section_sets
from ltbench.data import Batch
from ltbench.errors import ConfigError
from ltbench.filelists import IMAGENET_MEAN, IMAGENET_STD
from ltbench.losses import class_balanced_weights
from ltbench.method import DataInfo, Method, StepContext
from ltbench.models import create_model, model_kwargs
from ltbench.models.vit import VIT_NO_WEIGHT_DECAY
from ltbench.precision import official_precision
from ltbench.recipes import overlay
from ltbench.registry import register_method

# ----------------------------------------------------------------------------- the loss


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy to integer labels [B] (``nn.CrossEntropyLoss``) or soft targets [B, C]
    (timm ``SoftTargetCrossEntropy``: mean_i sum_j -t_ij log softmax(z_i)_j)."""
    if target.ndim == 2:
        return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
    return F.cross_entropy(logits, target)


class DeiTLTLoss(nn.Module):
    """DeiT-LT's loss (project page; official ``DistillationLoss`` with ``distillation_type='hard'``).

    Inputs: ``cls_logits`` and ``dist_logits`` [B, C], the student's two heads; ``target``, integer
    labels [B] or Mixup/CutMix soft targets [B, C] for the CLS head; ``teacher_logits`` [B, C] on
    the same (mixed, augmented) images; ``epoch``, the 1-based epoch: DRW is on when
    ``epoch > drw_epoch`` (the official 0-based ``epoch >= args.drw``).

    With y_t = argmax_j g(x)_j the teacher's label and alpha = 0.5::

        L = (1 - alpha) CE(f^c(x), y) + alpha L_dist
        L_dist = mean_i CE(f^d(x_i), y_t,i)                                   (epoch <= K)
        L_dist = sum_i w_{y_t,i} CE(f^d(x_i), y_t,i) / sum_i w_{y_t,i}          (epoch > K)

    w_c = (1 - beta) / (1 - beta^{n_c}) normalised to sum C (``main.py``: ``per_cls_weights``,
    beta 0.9999), indexed by the teacher's label, never the true one; the CLS term is never
    re-weighted. Returns (L, (1 - alpha) CE_cls, alpha L_dist), as the official forward.
    """

    def __init__(self, counts, drw_epoch: int, beta: float = 0.9999, alpha: float = 0.5) -> None:
        super().__init__()
        self.drw_epoch, self.alpha = drw_epoch, alpha
        self.register_buffer("weight", class_balanced_weights(counts, beta), persistent=False)

    def forward(
        self, cls_logits: Tensor, dist_logits: Tensor, target: Tensor, teacher_logits: Tensor, epoch: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        cls_term = (1 - self.alpha) * cross_entropy(cls_logits, target)
        teacher_label = teacher_logits.argmax(dim=-1)
        weight = self.weight if epoch > self.drw_epoch else None
        dist_term = self.alpha * F.cross_entropy(dist_logits, teacher_label, weight=weight)
        return cls_term + dist_term, cls_term, dist_term


def resize_for_teacher(x: Tensor, size: int) -> Tensor:
    """The student's batch at the teacher's input size: bicubic, ``align_corners=False``, no
    antialiasing, as torchvision 0.15's tensor ``Resize(size, interpolation=3)`` in the official
    ``engine.py`` (square images: both sides become ``size``); unchanged when already that size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False)


# ----------------------------------------------------------------------------- parameters and recipes


@dataclass
class DeiTLTParams:
    """``method.*`` of DeiT-LT: distillation, DRW, Mixup/CutMix and the teacher run."""

    alpha: float = 0.5  # weight of the DIST term (--distillation-alpha)
    drw_epoch: int = 1100  # K: the DIST term is class-balanced from epoch K + 1 (--drw)
    beta: float = 0.9999  # effective-number beta of the DRW weights (--beta)
    mixup: float = 0.8  # Mixup alpha (Mixup and CutMix 0: integer labels throughout)
    cutmix: float = 1.0  # CutMix alpha
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = field(default="batch", metadata={"choices": ("batch", "pair", "elem")})
    smoothing: float = 0.1  # label smoothing inside the Mixup targets
    mixup_after_drw: bool = True  # False = the CIFAR scripts' --no-mixup-drw
    teacher_size: int = 0  # teacher input side (--teacher-size); 0 = the teacher run's working size
    # the teacher run's method: ldam_drw (LDAM-DRW + SAM) or paco (PaCo + SAM, the published headline's)
    teacher: str = field(default="ldam_drw", metadata={"choices": ("ldam_drw", "paco")})
    teacher_preset: str = "paper_sam"  # preset of the teacher run
    teacher_sets: list[str] = field(default_factory=list)  # extra --set overrides of the teacher run
    teacher_seed: int = 0  # one teacher for every student seed
    teacher_checkpoint: str = field(default="", metadata=FILE)  # a finished teacher checkpoint instead of a teacher run
    # what the teacher sees: the student's normalised batch as it is (official engine.py) or that
    # batch re-standardised to the mean/std the teacher was trained with
    teacher_input: str = field(default="student", metadata={"choices": ("student", "own")})


# DeiT-B/16 distilled at 224 px on every dataset, CIFAR included (all sh/*.sh: --model
# deit_base_distilled_patch16_224; arguments.py: --drop-path 0.1, --drop 0).
DEIT_B16 = {
    "arch": "deit_distilled",
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "patch_size": 16,
    "mlp_ratio": 4.0,
    "drop_path": 0.1,
}
# datasets.py: ImageNet's for the student, also for CIFAR (the teacher keeps its own, see the docstring)
IMAGENET_NORM = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def _train(
    epochs: int, batch: int, lr: float, accum: int = 4, warmup: float = 5, augment: str = "randaug_erase"
) -> dict:
    """The one stage (``arguments.py`` defaults + ``sh/*.sh``): AdamW (eps 1e-8, wd 0.05; no decay
    on 1-D parameters and the tokens), timm cosine over the whole run with warmup from lr 1e-6 and
    min lr 1e-5, stepped at each accumulation window's fractional epoch; repeated augmentation
    (``RASampler``, 3 repeats); RandAugment rand-m9-mstd0.5-inc1 + random erasing 0.25. ``lr`` is
    absolute: the official ``5e-4 * batch_per_gpu * gpus / 512`` leaves the 4-step accumulation out."""
    return {
        "epochs": epochs,
        "batch_size": batch,
        "accum_steps": accum,
        "sampler": "repeated_aug",
        # the scripts keep the last batch (no --drop-last); RASampler's 256-draw rounding keeps it even
        # for Mixup (CIFAR-LT and ImageNet-LT: all batches full; iNat18: one half batch per epoch)
        "drop_last": False,
        "augment": [augment],
        "optim": {
            "name": "adamw",
            "lr": lr,
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.05,
            "no_decay_1d": True,
        },
        "schedule": {
            "name": "timm_cosine",
            "per": "batch",  # engine.py: lr_scheduler.step(epoch + batch / len(loader)) per window
            "warmup_epochs": warmup,
            "warmup_from": 1e-6 / lr,  # --warmup-lr 1e-6, absolute
            "min_lr": 1e-5,
        },
    }


# sh/train_c10_if100.sh, train_c100_if100.sh (IF50: the same with --imb_factor 0.02): 2 GPUs x 128 x
# 4 accumulation, 1200 epochs, --drw 1100, --no-mixup-drw, lr 5e-4 * 128 * 2 / 512 = 2.5e-4; CIFAR
# upsampled to 224 (default --input-size), teacher at 32 (--teacher-size 32), ImageNet mean/std.
def _paper_cifar(shot_rule: str) -> dict:
    return {
        "model": DEIT_B16,
        "method": {"drw_epoch": 1100, "mixup_after_drw": False},
        "data": {"image_size": 224, **IMAGENET_NORM},
        "stages": {"train": _train(1200, 256, 2.5e-4)},
        # Resize(256, bicubic) + CenterCrop(224); printed summaries use main.py's args.categories
        "eval": {"augment": "resize_center_crop_bicubic", "shot_rule": shot_rule},
    }


def _paper_large(epochs: int, drw: int, shot_rule: str) -> dict:
    """sh/train_imagenetlt.sh, sh/train_inat.sh: 4 GPUs x 128 x 4 accumulation, lr 5e-4 * 128 * 4
    / 512 = 5e-4, Mixup on during DRW, --map-targets (classes re-indexed by training count, teacher
    included), teacher at 224."""
    return {
        "model": DEIT_B16,
        "method": {"drw_epoch": drw, "mixup_after_drw": True},
        "data": {"image_size": 224, "reindex": True, **IMAGENET_NORM},
        "stages": {"train": _train(epochs, 512, 5e-4)},
        "eval": {"augment": "resize_center_crop_bicubic", "shot_rule": shot_rule},
    }


# No training logs are shipped and the README lists no hyperparameters. The released students'
# names record epochs and per-GPU batch: ..._1200_CIFAR10LT_imb100_128_..., _1200_CIFAR100LT_imb100_128_,
# _1200_CIFAR100LT_imb50_128_, _1400_IMAGENETLT_128_, _1000_INAT18_128_ agree with the scripts, but the
# CIFAR-10 IF50 one, ..._1200_CIFAR10LT_imb50_256_[IF50_paco_sam]_..., records 256 per GPU where
# sh/train_c10_if50.sh passes --batch-size 128 (256 would mean 512 per step over 2 GPUs and, by the lr
# rule, lr 5e-4). The presets follow the scripts: 128 per GPU (256 per step) and lr 2.5e-4 on every
# CIFAR run, IF50 included.
PAPER = {
    "cifar10_lt": _paper_cifar("index:3,7"),
    "cifar100_lt": _paper_cifar("index:36,71"),
    "imagenet_lt": _paper_large(1400, 1200, "index:390,835"),
    "inat2018": _paper_large(1000, 900, "index:842,4543"),
}

# Fashion-MNIST-LT on 2 CPU cores: the small ViT of `ce --preset cpu_vit` and LiVT's cpu preset (embed
# 128, depth 4, 4 heads, patch 7 on 28 px) with a DIST token, 30 epochs at the CE baseline's peak lr
# 1e-3 (batch 128, no accumulation), K = 27 (the CIFAR scripts' K / epochs = 0.92), Mixup off after K
# as on CIFAR, 2 warmup epochs, the `ldam_drw --preset cpu_sam` teacher (its SAM rho chosen on val) at
# 28 px. pad-crop-flip instead of RandAugment + erasing, as in LiVT's cpu preset (which found the heavy
# recipe underfits 28 px images at this budget); drop_last for whole batches under Mixup. Tuned on
# the val split (seed 0): repeated augmentation off (`sampler=instance`). With 3 repeats an epoch holds
# a third of the distinct images, which 1,200 CIFAR epochs absorb but 30 do not: val top-1 40.0 with
# RASampler, 48.5 without (rho-0.8 teacher); 42.5 and 49.0 with the rho-0.05 teacher (both at patch 4
# with a ResNet-32 teacher; not re-tuned for patch 7 and the ResNet-8 teacher of the hour budget).
CPU_FMNIST = {
    "model": {**DEIT_B16, "embed_dim": 128, "depth": 4, "num_heads": 4, "patch_size": 7},
    "method": {"drw_epoch": 27, "mixup_after_drw": False, "teacher_preset": "cpu_sam"},
    "stages": {
        "train": {
            **_train(30, 128, 1e-3, accum=1, warmup=2, augment="pad_crop_flip"),
            "sampler": "instance",
            "drop_last": True,
        }
    },
    "eval": {"augment": "default"},  # the native 28 px
}

# The full board (a GPU's budget): the cpu recipe above at the CIFAR scripts' 1,200 epochs, DRW from
# 1,100, 5 warmup epochs, with the `ldam_drw --preset full_sam` teacher (ResNet-32, 200 epochs, rho 0.8).
FULL_FMNIST = overlay(
    CPU_FMNIST,
    method={"drw_epoch": 1100, "teacher_preset": "full_sam"},
    stages={"train": {"epochs": 1200, "schedule": {"warmup_epochs": 5}}},
)

# the released checkpoints' teachers: PaCo + SAM (ResNet-32 on CIFAR, ResNet-50 on ImageNet-LT and iNat;
# `paco --preset paper_sam`), which the published headline rows distil from
PAPER_PACO = {name: overlay(recipe, method={"teacher": "paco"}) for name, recipe in PAPER.items()}

# the variant: the teacher sees the batch in its own training statistics (method.teacher_input)
PAPER_TEACHER_NORM = {
    dataset: {**recipe, "method": {**recipe["method"], "teacher_input": "own"}} for dataset, recipe in PAPER.items()
}

SMOKE = {
    "model": {**DEIT_B16, "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4},
    "method": {"drw_epoch": 1, "mixup_after_drw": False, "teacher_preset": "smoke"},
    "stages": {"train": {**_train(2, 32, 1e-3, accum=1, warmup=1, augment="pad_crop_flip"), "drop_last": True}},
    "eval": {"augment": "default"},
}


# ----------------------------------------------------------------------------- the method


@register_method("deit_lt")
class DeiTLT(Method):
    """DeiT-LT: distilled ViT, CLS head on labels, DIST head on an LDAM-DRW+SAM or PaCo+SAM teacher, DRW on DIST."""

    Params = DeiTLTParams
    # the ImageNet-LT recipe without its dataset-specific data keys and shot rule
    defaults = {
        **{k: v for k, v in PAPER["imagenet_lt"].items() if k != "data"},
        "eval": {"augment": "resize_center_crop_bicubic"},
    }
    presets = {
        "paper": PAPER,
        "paper_paco": PAPER_PACO,
        "paper_teacher_norm": PAPER_TEACHER_NORM,
        "cpu": {"fmnist_lt": CPU_FMNIST},
        "full": {"fmnist_lt": FULL_FMNIST},
        "smoke": {"*": SMOKE},
    }

    @classmethod
    def requires(cls, cfg: Config) -> dict[str, Config]:
        """The ``method.teacher`` run (``ldam_drw`` or ``paco``) on the same data (same data seed,
        re-indexing, root), at its own resolution and normalisation, with ``teacher_seed`` whatever
        the student's seed."""
        hp = cfg.method
        own = ("data.image_size=", "data.mean=", "data.std=")  # the teacher's resolution and normalisation
        sets = [a for a in section_sets(cfg, "data") if not a.startswith(own)] + list(hp.teacher_sets)
        teacher = resolve_config(
            hp.teacher, cfg.dataset_name, preset=hp.teacher_preset, sets=sets, seed=hp.teacher_seed
        )
        return {"teacher": teacher}

    def __init__(self, cfg: Config, info: DataInfo, teachers: dict[str, nn.Module] | None = None) -> None:
        super().__init__(cfg, info, teachers)
        hp = cfg.method
        if cfg.model.arch != "deit_distilled":
            raise ConfigError(f"deit_lt trains a distilled DeiT (model.arch=deit_distilled), got {cfg.model.arch!r}")
        if "teacher" not in self.teachers:
            raise ConfigError("deit_lt needs its teacher run (the runner passes it as teachers['teacher'])")
        self.vit = create_model(
            "deit_distilled",
            **model_kwargs(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans, img_size=info.image_size),
        )
        self.criterion = DeiTLTLoss(info.train_counts, hp.drw_epoch, hp.beta, hp.alpha)
        teacher_info = getattr(self.teachers["teacher"], "info", None)
        self.teacher_size = hp.teacher_size or (teacher_info.image_size if teacher_info else info.image_size)
        self.mixup = mixup_from(hp, info.num_classes)  # as main.py
        scale, shift = self._teacher_restandardisation() if hp.teacher_input == "own" else (None, None)
        self.register_buffer("teacher_scale", scale, persistent=False)
        self.register_buffer("teacher_shift", shift, persistent=False)

    def _teacher_restandardisation(self) -> tuple[Tensor, Tensor]:
        """(a, b) [C, 1, 1] such that a x + b is the student's batch x normalised with the teacher's
        statistics: x (std_s / std_t) + (mean_s - mean_t) / std_t."""
        student = self.cfg.data
        teacher = getattr(getattr(self.teachers["teacher"], "cfg", None), "data", None)
        if not any(hasattr(d, "mean") for d in (student, teacher)):  # both the dataset's fixed statistics
            return torch.ones(1, 1, 1), torch.zeros(1, 1, 1)
        if not all(hasattr(d, "mean") and hasattr(d, "std") for d in (student, teacher)):
            raise ConfigError(
                "method.teacher_input=own needs the student's and the teacher's data.mean / data.std; "
                "use method.teacher_input=student (the official behaviour) for this dataset or teacher"
            )
        s_mean, s_std, t_mean, t_std = (
            torch.tensor(v, dtype=torch.float32).view(-1, 1, 1)
            for v in (student.mean, student.std, teacher.mean, teacher.std)
        )
        return s_std / t_std, (s_mean - t_mean) / t_std

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{name}" for name in VIT_NO_WEIGHT_DECAY}

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """CLS-head and DIST-head logits [B, C] (``deit_models/deit.py``: ``head(x[:, 0])``,
        ``head_dist(x[:, 1])`` after the final norm)."""
        tokens = self.vit.forward_features(x)
        return self.vit.head(self.vit.head_drop(tokens[:, 0])), self.vit.head_dist(self.vit.head_drop(tokens[:, 1]))

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> Tensor:
        """The frozen teacher's logits on the student's (mixed, augmented) batch (``engine.py``)."""
        x = resize_for_teacher(x, self.teacher_size)
        if self.teacher_scale is not None:  # teacher_input=own: in the teacher's training statistics
            x = x * self.teacher_scale + self.teacher_shift
        return self.teachers["teacher"].predict(x)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        x, y = batch.x, batch.y
        drw = ctx.epoch > self.hp.drw_epoch
        if self.mixup is not None and (not drw or self.hp.mixup_after_drw):
            x, y = self.mixup(x, y)  # soft targets [B, C]; after K on CIFAR: integer labels
        cls_logits, dist_logits = self.heads(x)
        loss, cls_term, dist_term = self.criterion(cls_logits, dist_logits, y, self.teacher_logits(x), ctx.epoch)
        return {"loss": loss, "cls": cls_term.detach(), "dist": dist_term.detach()}

    def predict(self, x: Tensor) -> Tensor:
        return self.predict_all(x)[0]

    def predict_heads(self, x: Tensor) -> dict[str, Tensor]:
        return self.predict_all(x)[1]

    def predict_all(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cls_logits, dist_logits = self.heads(x)
        return (cls_logits + dist_logits) / 2, {"cls": cls_logits, "dist": dist_logits}  # engine.evaluate: output_avg


# precision of the official code: engine.py trains under torch.cuda.amp.autocast() with timm's
# NativeScaler (fp16), and evaluate() autocasts too
official_precision(DeiTLT.presets, "fp16")
