"""Tiny methods for trainer tests (registered on import): a two-stage method with BatchNorm and
dropout, a BN-free linear model, one whose loss turns NaN, a quadratic for SAM, and a student that
distils from a `toy_linear` teacher run."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ltbench.config import FILE, resolve_config, section_sets
from ltbench.method import Method
from ltbench.registry import METHODS, register_method

FAST = {
    "stages": {
        "*": {
            "epochs": 2,
            "batch_size": 32,
            "augment": ["pad_crop_flip"],
            "optim": {"name": "sgd", "lr": 0.05},
            "schedule": {"name": "cosine", "per": "step"},
        }
    }
}


def _register(name):
    def wrap(cls):
        return cls if name in METHODS else register_method(name)(cls)

    return wrap


@_register("toy2")
class TwoStage(Method):
    """Two stages: train a small conv net, then re-train a new head on the frozen body."""

    stage_names = ("train", "head")
    defaults = FAST

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        c = info.num_classes
        self.body = nn.Sequential(
            nn.Conv2d(info.in_chans, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.2),
        )
        self.fc = nn.Linear(32, c)
        self.head: nn.Module | None = None

    def enter_stage(self, stage):
        if stage == "head":
            self.head = nn.Linear(32, self.info.num_classes)
            self.body.requires_grad_(False)
            self.fc.requires_grad_(False)

    def set_train_mode(self, stage):
        self.train()
        if stage == "head":
            self.body.eval()

    def train_step(self, batch, ctx):
        return {"loss": F.cross_entropy(self.predict(batch.x), batch.y)}

    def predict(self, x):
        return (self.head or self.fc)(self.body(x))

    def predict_heads(self, x):
        return {"first_head": self.fc(self.body(x))}


@_register("toy_linear")
class Linear(Method):
    """A linear classifier on pixels: no BatchNorm, no randomness."""

    defaults = {
        "stages": {
            "train": {
                "epochs": 1,
                "batch_size": 32,
                "augment": ["normalize"],
                "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            }
        }
    }

    def __init__(self, cfg, info, teachers=None):
        super().__init__(cfg, info, teachers)
        self.fc = nn.Linear(info.in_chans * info.image_size**2, info.num_classes)

    def train_step(self, batch, ctx):
        return {"loss": F.cross_entropy(self.predict(batch.x), batch.y)}

    def predict(self, x):
        return self.fc(x.flatten(1))


@dataclass
class NaNParams:
    nan_at_step: int = 3
    nan_rank: int = -1  # >= 0: only on this DDP rank


@_register("toy_nan")
class NaNAtStep(Linear):
    """The linear model, whose loss becomes NaN at a given optimizer step (on every rank, or on one)."""

    Params = NaNParams

    def train_step(self, batch, ctx):
        loss = super().train_step(batch, ctx)["loss"]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        here = self.hp.nan_rank in (-1, rank)
        return {"loss": loss * torch.nan if ctx.step == self.hp.nan_at_step and here else loss}


@_register("toy_quadratic")
class Quadratic(Method):
    """L(w) = 0.5 w_1^2 + w_2^2 whatever the batch, from w = (3, 2): a loss whose SAM steps can be
    computed by hand."""

    defaults = {
        "stages": {
            "train": {
                "epochs": 1,
                "batch_size": 100,
                "augment": ["normalize"],
                "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
                "schedule": {"name": "constant"},
            }
        }
    }

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.w = nn.Parameter(torch.tensor([3.0, 2.0]))

    def train_step(self, batch, ctx):
        return {"loss": 0.5 * self.w[0] ** 2 + self.w[1] ** 2 + 0.0 * batch.x.sum()}

    def predict(self, x):
        return x.flatten(1)[:, :1].expand(-1, self.info.num_classes) * self.w.sum()


@dataclass
class StudentParams:
    teacher_epochs: int = 1  # the teacher run's length: students asking for different ones differ
    teacher_checkpoint: str = field(default="", metadata=FILE)  # weights instead of a teacher run
    distill: float = 0.5  # weight of the KL to the teacher's softmax
    teacher_data_seed: int = -1  # >= 0: the teacher draws its data with this seed (a mismatch)


@_register("toy_student")
class Student(Linear):
    """The linear model distilling from a `toy_linear` teacher run: mean of CE and KL(teacher || student)."""

    Params = StudentParams

    @classmethod
    def requires(cls, cfg):
        sets = [*section_sets(cfg, "data"), f"stages.train.epochs={cfg.method.teacher_epochs}"]
        if cfg.method.teacher_data_seed >= 0:
            sets.append(f"data.seed={cfg.method.teacher_data_seed}")
        return {"teacher": resolve_config("toy_linear", cfg.dataset_name, sets=sets, seed=0)}

    def train_step(self, batch, ctx):
        logits = self.predict(batch.x)
        with torch.no_grad():
            target = F.softmax(self.teachers["teacher"].predict(batch.x), dim=1)
        kl = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
        ce = F.cross_entropy(logits, batch.y)
        return {"loss": (1 - self.hp.distill) * ce + self.hp.distill * kl, "ce": ce, "kl": kl}
