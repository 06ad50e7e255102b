"""What the decoupled methods share (Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition", ICLR 2020): the representation is a finished `ce` run, and only the
classifier is re-balanced afterwards.

Reference: the official code, facebookresearch/classifier-balancing (``run_networks.py``,
``config/*/cls_crt.yaml`` / ``cls_lws.yaml``, ``models/DotProductClassifier.py``,
``models/TauNormClassifier.py``, ``tau_norm.py``, ``data/ClassAwareSampler.py``).

The `ce` run is reached through :meth:`Method.requires` as the run named ``representation``: the
same dataset and ``data.*`` settings, the preset ``method.representation_preset`` (default: this
run's own preset, so ``crt --preset cpu`` starts from ``ce --preset cpu``) and this run's seed. Every
decoupled row of one seed starts from the same `ce` run, which is trained once; ``run.json``
``teachers.representation`` names it (run id, directory, test accuracy), so the report can pair the
rows. The backbone is copied into this method (``self.net``) with its parameters frozen: as in
``run_networks.py`` (``fix: true`` sets ``requires_grad = False`` and every network is then put in
``train()``), BatchNorm keeps updating its running statistics during the classifier stage, on the
class-balanced batches, so the copy (not the `ce` run) holds the statistics this run is evaluated
with.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from ltbench.config import Config, resolve_config, section_sets
from ltbench.errors import ConfigError
from ltbench.method import DataInfo, Method
from ltbench.recipes import sgd


@dataclass
class DecoupledParams:
    representation_preset: str = ""  # preset of the `ce` representation run; "" = this run's preset
    representation_sets: list[str] = field(default_factory=list)  # extra --set overrides of that run


def classifier_stage(epochs: int, batch_size: int, lr: float, augment: str = "pad_crop_flip") -> dict:
    """The classifier stage of ``cls_crt.yaml`` / ``cls_lws.yaml``: SGD (momentum 0.9, weight decay
    5e-4, no Nesterov), cosine annealing to 0 over the stage (``coslr: true``, ``endlr: 0``),
    class-aware sampling (``ClassAwareSampler``, 4 images per class visit), one draw per training
    image an epoch (``epoch_steps``)."""
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "sampler": "class_aware",
        "augment": [augment],
        "optim": sgd(lr=lr, weight_decay=5e-4, nesterov=False),
        "schedule": {"name": "cosine", "per": "epoch", "warmup_epochs": 0, "min_lr": 0.0},
    }


class Decoupled(Method):
    """Base of `crt`, `tau_norm` and `lws`: the frozen backbone of the `ce` run it starts from."""

    Params = DecoupledParams

    @classmethod
    def requires(cls, cfg: Config) -> dict[str, Config]:
        """The `ce` run of this run's data, preset (or ``representation_preset``) and seed."""
        hp = cfg.method
        ce = resolve_config(
            "ce",
            cfg.dataset_name,
            preset=hp.representation_preset or cfg.preset,
            sets=section_sets(cfg, "data") + list(hp.representation_sets),
            seed=cfg.train.seed,
        )
        return {"representation": ce}

    def __init__(self, cfg: Config, info: DataInfo, teachers: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__(cfg, info, teachers)
        if "representation" not in self.teachers:
            raise ConfigError(
                f"{self.registered_name} starts from a finished `ce` run (the runner passes it as "
                "teachers['representation']); train it through `ltbench run`, which trains that run first"
            )
        self.net = copy.deepcopy(self.teachers["representation"].net)  # backbone + the CE classifier `fc`
        self.net.requires_grad_(False)
