"""Cross-entropy baseline: one backbone trained with plain softmax cross-entropy.

The reference every leaderboard compares to. The ``paper`` preset is the CE recipe of LDAM-DRW's
CIFAR code (used for RIDE's CE row): 200 epochs, SGD 0.1, weight decay 2e-4, 5 warmup epochs,
lr x0.01 at epochs 160 and 180.
"""

from __future__ import annotations

from torch import Tensor, nn

from ltbench.config import Config
from ltbench.data import Batch
from ltbench.method import DataInfo, Method, StepContext
from ltbench.models import create_model, model_kwargs
from ltbench.precision import official_precision
from ltbench.recipes import sgd, step_lr
from ltbench.registry import register_method

LDAM_DRW_CIFAR = {
    "model": {"arch": "resnet32"},
    "stages": {
        "train": {
            "epochs": 200,
            "batch_size": 128,
            "augment": ["pad_crop_flip"],
            "optim": sgd(lr=0.1, weight_decay=2e-4, nesterov=False),
            "schedule": step_lr(milestones=[160, 180], gamma=0.01, warmup=5),
        }
    },
}

# Fashion-MNIST-LT on 2 CPU cores: ResNet-8, 30 epochs, one-cycle (shared by ldam_drw and la). The
# cpu presets train ResNet-8 (1 block per stage) where the papers train ResNet-32 on CIFAR, so that
# every method x 3 seeds fits the leaderboard's hour on 2 cores; their other choices were made on val
# with ResNet-32 and a patch-4 ViT and were not re-tuned for the smaller backbones.
CPU_FMNIST = {
    "model": {"arch": "resnet8"},
    "stages": {
        "train": {
            "epochs": 30,
            "batch_size": 128,
            "augment": ["pad_crop_flip"],
            "optim": sgd(lr=0.1, weight_decay=5e-4),
            "schedule": {"name": "onecycle", "per": "step"},
        }
    },
}

# a 20-epoch step schedule with CIFAR's proportions (warmup 2, lr x0.01 at 16 and 18, as 5, 160 and
# 180 of 200) and rotation in the crop recipe: the `train` stage of `ride --preset cpu` and `ce --preset
# cpu_ride`, one definition so that the two rows cannot drift apart
CPU_STEP_STAGE = {
    "epochs": 20,
    "batch_size": 128,
    "augment": ["pad_crop_flip_rotate"],
    "optim": sgd(lr=0.1, weight_decay=5e-4),
    "schedule": step_lr(milestones=[16, 18], gamma=0.01, warmup=2),
}

# the cpu presets' ViT: 16 tokens of 7 x 7 px on 28 px images (2.6x the throughput of patch 4)
SMALL_VIT = {"arch": "vit", "embed_dim": 128, "depth": 4, "num_heads": 4, "patch_size": 7}


# --- `full` presets on fmnist_lt: every method at its official CIFAR-100-LT schedule (the board for a
# GPU, `benchmarks/leaderboard_time.py --preset full`). Each method's `full` row is compared with a CE
# row of its own backbone and schedule: `full` (LDAM-DRW's CIFAR recipe: ce, la, ldam_drw, and focal and
# cb, whose official CIFAR schedule is the same; crt, tau_norm and lws start from this run) and
# `full_<method>` below, each the first stage of that method's `full` preset (tests/test_full_presets.py
# checks that they agree) with one plain ResNet-32 or the small ViT.
_ADAMW = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "no_decay_1d": True}
FULL_ROWS = {
    # RIDE configs/config_imbalance_cifar100_ride.json: 200 epochs, x0.01 at 160 and 180, 5 warmup
    "full_ride": {
        "model": {"arch": "resnet32"},
        "stages": {
            "train": {
                "epochs": 200,
                "batch_size": 128,
                "augment": ["pad_crop_flip_rotate"],
                "optim": sgd(lr=0.1, weight_decay=5e-4),
                "schedule": step_lr(milestones=[160, 180], gamma=0.01, warmup=5),
            }
        },
    },
    # MDCS configs/config_cifar100_ir100_mdcs.json: 400 epochs of batch 64, x0.1 at 200, 320, 380, 20
    # warmup; CE trains on the weak view
    "full_mdcs": {
        "model": {"arch": "resnet32"},
        "stages": {
            "train": {
                "epochs": 400,
                "batch_size": 64,
                "augment": ["pad_crop_flip_rotate"],
                "optim": sgd(lr=0.1, weight_decay=5e-4),
                "schedule": step_lr(milestones=[200, 320, 380], gamma=0.1, warmup=20),
            }
        },
    },
    # SHIKE cifarTrain.py: stage 1's optimiser and warmup + cosine over both stages' 200 epochs
    "full_shike": {
        "model": {"arch": "resnet32"},
        "stages": {
            "train": {
                "epochs": 200,
                "batch_size": 128,
                "augment": ["autoaug_cutout"],
                "optim": sgd(lr=0.15, weight_decay=5e-4, nesterov=False),
                "schedule": {"name": "cosine", "per": "epoch", "warmup_epochs": 5, "warmup_from": 1 / 6, "min_lr": 0.0},
            }
        },
    },
    # BalancedMetaSoftmax-Classification config/CIFAR100_LT/balanced_softmax_imba200.yaml: batch 512
    # (the last partial batch dropped), SGD 0.1 (momentum 0.9, wd 5e-4), CIFAR-100-LT's 685 epochs with a
    # 43-epoch warmup from 0.05 (its 13,000 and 800 iterations, see methods/bal_softmax.py), cosine to 0
    # per epoch; AutoAugment + Cutout
    "full_bal_softmax": {
        "model": {"arch": "resnet32"},
        "stages": {
            "train": {
                "epochs": 685,
                "batch_size": 512,
                "drop_last": True,
                "augment": ["autoaug_cutout"],
                "optim": sgd(lr=0.1, weight_decay=5e-4, nesterov=False),
                "schedule": {"name": "cosine", "per": "epoch", "warmup_epochs": 43, "warmup_from": 0.5},
            }
        },
    },
    # PaCo sh/CIFAR100_train_imb0.01.sh + paco_cifar.py: 400 epochs of batch 128 (drop_last), SGD 0.05
    # (momentum 0.9, wd 5e-4), 10 warmup epochs then x0.1 after 320 and after 360 (`paco_step`, registered
    # by methods/paco.py); CE trains on PaCo's query view (AutoAugment + Cutout)
    "full_paco": {
        "model": {"arch": "resnet32"},
        "stages": {
            "train": {
                "epochs": 400,
                "batch_size": 128,
                "drop_last": True,
                "augment": ["autoaug_cutout"],
                "optim": sgd(lr=0.05, weight_decay=5e-4, nesterov=False),
                # gamma given: ce's own default schedule (LDAM-DRW's) has 0.01
                "schedule": {
                    "name": "paco_step",
                    "per": "epoch",
                    "warmup_epochs": 10,
                    "milestones": [321, 361],
                    "gamma": 0.1,
                },
            }
        },
    },
    # LiVT's BFT stage on the small ViT: 100 epochs (5 warmup), per-step cosine to 1e-6, peak 1e-3
    "full_livt": {
        "model": SMALL_VIT,
        "stages": {
            "train": {
                "epochs": 100,
                "batch_size": 128,
                "drop_last": True,
                "augment": ["pad_crop_flip"],
                "optim": _ADAMW,
                "schedule": {"name": "cosine", "per": "step", "warmup_epochs": 5, "min_lr": 1e-6},
            }
        },
    },
    # DeiT-LT's CIFAR schedule on the small ViT: 1200 epochs, timm cosine (5 warmup from 1e-6, min 1e-5)
    "full_deit_lt": {
        "model": SMALL_VIT,
        "stages": {
            "train": {
                "epochs": 1200,
                "batch_size": 128,
                "drop_last": True,
                "augment": ["pad_crop_flip"],
                "optim": _ADAMW,
                "schedule": {
                    "name": "timm_cosine",
                    "per": "batch",
                    "warmup_epochs": 5,
                    "warmup_from": 1e-3,
                    "min_lr": 1e-5,
                },
            }
        },
    },
}


class OneBackbone(Method):
    """One backbone trained on ``criterion(logits, labels)``, raw logits at test time: the family of
    ``ce``, ``la``, ``bal_softmax``, ``focal`` and ``cb``, which differ only in their loss (and how a
    loss wants the classifier initialised)."""

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        self.net = create_model(
            cfg.model.arch,
            **model_kwargs(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans, img_size=info.image_size),
        )
        self.criterion = self.build_criterion(info)

    def build_criterion(self, info: DataInfo) -> nn.Module:
        """The loss on (logits, labels) this method trains with."""
        raise NotImplementedError

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        return {"loss": self.criterion(self.net(batch.x), batch.y)}

    def predict(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_method("ce")
class CrossEntropy(OneBackbone):
    """Cross-entropy baseline: one backbone, softmax cross-entropy, no re-balancing."""

    defaults = LDAM_DRW_CIFAR
    presets = {
        # CIFAR recipes: official runs on one GPU (batch 128 per BatchNorm); several GPUs: train.sync_bn=true
        "paper": {"cifar10_lt": LDAM_DRW_CIFAR, "cifar100_lt": LDAM_DRW_CIFAR},
        # tuned on fmnist_lt (val split); "*": the same recipe serves any small dataset
        "cpu": {"*": CPU_FMNIST},
        # the `train` stage of ride's cpu preset, so that RIDE is compared with CE on one schedule
        "cpu_ride": {"*": {"model": {"arch": "resnet8"}, "stages": {"train": CPU_STEP_STAGE}}},
        "cpu_vit": {
            "*": {
                "model": SMALL_VIT,
                "stages": {
                    "train": {
                        "epochs": 30,
                        "batch_size": 128,
                        "augment": ["pad_crop_flip"],
                        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "no_decay_1d": True},
                        "schedule": {"name": "onecycle", "per": "step"},
                    }
                },
            }
        },
        "full": {"fmnist_lt": LDAM_DRW_CIFAR},
        "full_ride": {"fmnist_lt": FULL_ROWS["full_ride"]},
        "full_mdcs": {"fmnist_lt": FULL_ROWS["full_mdcs"]},
        "full_shike": {"fmnist_lt": FULL_ROWS["full_shike"]},
        "full_bal_softmax": {"fmnist_lt": FULL_ROWS["full_bal_softmax"]},
        "full_paco": {"fmnist_lt": FULL_ROWS["full_paco"]},
        "full_livt": {"fmnist_lt": FULL_ROWS["full_livt"]},
        "full_deit_lt": {"fmnist_lt": FULL_ROWS["full_deit_lt"]},
        "smoke": {
            "*": {
                "stages": {"train": {"epochs": 2, "batch_size": 32, "schedule": {"name": "cosine", "warmup_epochs": 0}}}
            }
        },
    }

    def build_criterion(self, info: DataInfo) -> nn.Module:
        return nn.CrossEntropyLoss()


# precision of the official code, training and evaluation: kaidic/LDAM-DRW cifar_train.py has no
# autocast (fp32)
official_precision(CrossEntropy.presets, "fp32")
