"""Builders of the config fragments that presets are made of.

A preset should read as its paper's recipe (``sgd(lr=0.1, weight_decay=5e-4)``,
``step_lr(milestones=[160, 180], gamma=0.01, warmup=5)``), and an optimiser or schedule that several
methods' official code share is spelled once, here, with keyword arguments only.
"""

from __future__ import annotations

import copy


def sgd(*, lr: float, weight_decay: float, nesterov: bool = True, momentum: float = 0.9) -> dict:
    """``stages.<s>.optim`` for ``torch.optim.SGD``."""
    return {"name": "sgd", "lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}


def step_lr(*, milestones: list[int], gamma: float, warmup: int) -> dict:
    """``stages.<s>.schedule``, stepped per epoch: ``lr * (i + 1) / warmup`` for epoch index
    ``i < warmup``, then times ``gamma`` at each milestone (the "CustomLR" of the RIDE and MDCS
    code, LDAM-DRW's CIFAR schedule)."""
    return {"name": "step", "per": "epoch", "warmup_epochs": warmup, "milestones": milestones, "gamma": gamma}


def overlay(base: dict, **sections: dict) -> dict:
    """A deep copy of the preset fragment ``base`` with the nested ``sections`` merged in (a key
    given in both takes the section's value): ``overlay(CIFAR, method={"drw_epoch": 160})``."""

    def merge(into: dict, extra: dict) -> dict:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = copy.deepcopy(value)
        return into

    return merge(copy.deepcopy(base), sections)
