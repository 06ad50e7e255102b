"""Tiny methods for trainer tests (registered on import): a two-stage method with BatchNorm and
dropout, a BN-free linear model, and one whose loss turns NaN."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.fc = nn.Linear(info.in_chans * info.image_size**2, info.num_classes)

    def train_step(self, batch, ctx):
        return {"loss": F.cross_entropy(self.predict(batch.x), batch.y)}

    def predict(self, x):
        return self.fc(x.flatten(1))


@dataclass
class NaNParams:
    nan_at_step: int = 3


@_register("toy_nan")
class NaNAtStep(Linear):
    """The linear model, whose loss becomes NaN at a given optimizer step."""

    Params = NaNParams

    def train_step(self, batch, ctx):
        loss = super().train_step(batch, ctx)["loss"]
        return {"loss": loss * torch.nan if ctx.step == self.hp.nan_at_step else loss}
