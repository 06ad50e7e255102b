"""LDAM-DRW: Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss (Cao et al.,
NeurIPS 2019), optionally with SAM as in Saddle-LongTail (Rangwani et al., NeurIPS 2022).

References: the official LDAM-DRW code (kaidic/LDAM-DRW, ``cifar_train.py``, ``losses.py``,
``models/resnet_cifar.py``), as ported into val-iisc/Saddle-LongTail @ 48328fb (``cifar_train_sam.py``,
``imnet_train_sam.py``, ``inat_train_sam.py``, ``run.sh``), whose LDAM+DRW+SAM networks are the
teachers of DeiT-LT (``../shared/refs/deit_lt.md``).

- **Model**: one backbone whose classifier is the cosine classifier
  :class:`~ltbench.models.heads.NormedLinear` with s = 30 (the official ``use_norm=True``):
  CIFAR ResNet-32 on CIFAR, torchvision ResNet-50 on ImageNet-LT and iNaturalist.
- **Loss**: :class:`~ltbench.losses.LDAMLoss`: margins m_c ~ n_c^(-1/4) (largest 0.5; 0.3 for the
  ResNet-50 teachers) taken off the target logit, and deferred re-weighting (DRW): plain for
  ``drw_epoch`` epochs, then class-balanced weights (effective number, beta = 0.9999).
- **SAM** (``stages.train.optim.sam_rho``, a core optimizer option): rho 0.8 on CIFAR; on
  ImageNet-LT / iNat rho 0.05 for epochs 1-5, 0.1 to 60, 0.5 after (Saddle-LongTail's step schedule).
- **Prediction**: s * cos(feature, class weight); ``predict`` is what a student (DeiT-LT) distils from.

Harness policy: the official codes pick the best epoch on the test set; ltbench evaluates the last
epoch (``eval.selection=last``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ltbench.config import Config
from ltbench.data import Batch
from ltbench.filelists import INAT_MEAN, INAT_STD
from ltbench.losses import LDAMLoss
from ltbench.method import DataInfo, Method, StepContext
from ltbench.models import create_model
from ltbench.models.heads import NormedLinear
from ltbench.precision import official_precision
from ltbench.recipes import overlay
from ltbench.registry import register_method

from .ce import CPU_FMNIST as CE_CPU_FMNIST
from .ce import LDAM_DRW_CIFAR as CE_LDAM_DRW_CIFAR

# ----------------------------------------------------------------------------- recipes


# cifar_train.py (LDAM-DRW): ResNet-32, 200 epochs, batch 128, SGD 0.1 (momentum 0.9, no Nesterov,
# wd 2e-4), lr * epoch / 5 warmup, x0.01 after 160, x1e-4 after 180; DRW from epoch 161 -- the CE
# recipe of that file, shared with `ce`'s paper preset
CIFAR = overlay(CE_LDAM_DRW_CIFAR, method={"max_margin": 0.5, "drw_epoch": 160})

# Saddle-LongTail run.sh: cifar_train_sam.py --loss_type LDAM --train_rule DRW --rho 0.8 --rho_schedule none
CIFAR_SAM = overlay(CIFAR, stages={"train": {"optim": {"sam_rho": 0.8}}})


def _resnet50_sam(lr: float, weight_decay: float) -> dict:
    """Saddle-LongTail run.sh, imnet_train_sam.py / inat_train_sam.py with --loss_type LDAM
    --train_rule DRW -b 256 --epochs 90 --arch resnet50 --cos_lr --rho_schedule step
    --rho_steps 0.05 0.1 0.5 0.5 --margin 0.3: DRW from epoch 61 (``epoch // 60``), per-epoch
    CosineAnnealingLR(T_max=90) without warmup, rho 0.05 up to epoch 5, 0.1 to 60, 0.5 to 75, then 0.5."""
    return {
        "model": {"arch": "resnet50"},
        "method": {"max_margin": 0.3, "drw_epoch": 60},
        "stages": {
            "train": {
                "epochs": 90,
                "batch_size": 256,
                "augment": ["rrc_flip_jitter"],  # RandomResizedCrop(224), flip, ColorJitter(0.4, 0.4, 0.4, 0)
                "optim": {
                    "name": "sgd",
                    "lr": lr,
                    "momentum": 0.9,
                    "nesterov": False,
                    "weight_decay": weight_decay,
                    "sam_rho": 0.05,
                    "sam_rho_milestones": [5, 60, 75],
                    "sam_rho_values": [0.1, 0.5, 0.5],
                },
                "schedule": {"name": "cosine", "per": "epoch", "warmup_epochs": 0, "min_lr": 0.0},
            }
        },
    }


# `ce`'s cpu recipe (ResNet-8, 30 epochs, one-cycle) with DRW from epoch 25: the last fifth of
# training, as 160 of 200 on CIFAR. Not tuned beyond that. `cpu_sam` (DeiT-LT's cpu teacher) adds SAM
# with rho 0.05, the ImageNet-LT schedule's first value, chosen on the val split (seed 0, val top-1):
# 83.5 at 0.05, 81.5 at 0.2, 70.0 at CIFAR's 0.8 (the same 0.05 run gives 85.5 on another CPU), with
# the ResNet-32 of the earlier cpu recipe
CPU_FMNIST = overlay(CE_CPU_FMNIST, method={"max_margin": 0.5, "drw_epoch": 24})
CPU_FMNIST_SAM = overlay(CPU_FMNIST, stages={"train": {"optim": {"sam_rho": 0.05}}})

SMOKE = {
    "method": {"drw_epoch": 1},
    "stages": {"train": {"epochs": 2, "batch_size": 32, "schedule": {"name": "cosine", "warmup_epochs": 0}}},
}


# ----------------------------------------------------------------------------- the method


@dataclass
class LDAMDRWParams:
    scale: float = 30.0  # s of the cosine classifier (the official LDAMLoss's s)
    max_margin: float = 0.5  # largest LDAM margin (the rarest class)
    drw_epoch: int = 160  # class-balanced re-weighting when epoch > drw_epoch (1-based); < 0 never
    cb_beta: float = 0.9999  # effective-number beta of the DRW weights


@register_method("ldam_drw")
class LDAMDRW(Method):
    """LDAM-DRW: one backbone with a cosine classifier, LDAM margins, deferred re-weighting."""

    Params = LDAMDRWParams
    defaults = CIFAR
    presets = {
        # CIFAR recipes: official runs on one GPU (batch 128 per BatchNorm); several GPUs: train.sync_bn=true
        "paper": {"cifar10_lt": CIFAR, "cifar100_lt": CIFAR},
        # the LDAM+DRW+SAM teachers of DeiT-LT (Saddle-LongTail run.sh)
        "paper_sam": {
            "cifar10_lt": CIFAR_SAM,
            "cifar100_lt": CIFAR_SAM,
            "imagenet_lt": _resnet50_sam(lr=0.2, weight_decay=2e-4),
            # datasets/ina2018.py normalises with the iNat statistics (imagenet.py: ImageNet's)
            "inat2018": overlay(_resnet50_sam(lr=0.1, weight_decay=1e-4), data={"mean": INAT_MEAN, "std": INAT_STD}),
        },
        "cpu": {"fmnist_lt": CPU_FMNIST},
        "cpu_sam": {"fmnist_lt": CPU_FMNIST_SAM},
        "full": {"fmnist_lt": CIFAR},  # the full board: the CIFAR recipe on fmnist_lt
        "full_sam": {"fmnist_lt": CIFAR_SAM},  # DeiT-LT's full teacher
        "smoke": {"*": SMOKE},
    }

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        hp = self.hp
        self.net = create_model(cfg.model.arch, num_classes=info.num_classes, in_chans=info.in_chans)
        self.net.fc = NormedLinear(self.net.num_features, info.num_classes, hp.scale)  # official use_norm=True
        self.criterion = LDAMLoss(info.train_counts, hp.scale, hp.max_margin, hp.drw_epoch, hp.cb_beta)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        return {"loss": self.criterion(self.net(batch.x), batch.y, ctx.epoch)}

    def predict(self, x: Tensor) -> Tensor:
        return self.net(x)


# precision of the official codes, training and evaluation: kaidic/LDAM-DRW cifar_train.py and
# Saddle-LongTail cifar_train_sam.py (SAM teachers) have no autocast (fp32)
official_precision(LDAMDRW.presets, "fp32")
