"""The method interface: what a long-tailed recognition method supplies to the common trainer.

A method is one ``nn.Module`` (DomainBed's "algorithm") holding every network it trains, with:

- ``Params``: a dataclass of its own hyperparameters (the ``method.*`` config section);
- ``stage_names``, ``defaults`` and ``presets`` (per dataset): its stages and recipes;
- ``enter_stage(stage)``: structural changes when a stage begins (new heads, frozen parts);
- ``train_step(batch, ctx) -> {"loss": ..., ...}``: the loss of one batch;
- ``predict(x) -> logits``: how heads or experts combine at test time (``predict_heads`` for
  extra heads that are reported too, ``predict_all`` for both from one forward pass).

The trainer owns devices, AMP, DDP, optimizers, schedules, checkpoints and evaluation, and never
looks at which method it is running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .config import Config, OptimConfig
from .data import Batch, LTData
from .models.compute import count_macs
from .optim import param_groups


@dataclass
class EvalCounters:
    """What ``predict`` counts during one evaluation pass, beyond accuracy (e.g. RIDE: how many
    samples used each number of experts, the MACs the routed model spent).

    ``tensors`` are the live counters ``predict`` adds to; the evaluation sums them over DDP ranks
    and stores them in run.json, and ``summarize`` turns those totals (as lists) into the derived
    figures stored beside them."""

    tensors: dict[str, Tensor]
    summarize: Callable[[dict[str, list]], dict[str, Any]] = field(default=lambda totals: {})


@dataclass(frozen=True)
class DataInfo:
    """What a method may know about the data: shapes and the training class distribution."""

    num_classes: int
    in_chans: int
    image_size: int
    train_counts: np.ndarray

    @classmethod
    def of(cls, data: LTData) -> DataInfo:
        return cls(data.num_classes, data.in_chans, data.image_size, data.train_counts)

    @property
    def prior(self) -> np.ndarray:
        return self.train_counts / self.train_counts.sum()


@dataclass(frozen=True)
class StepContext:
    """Where training is: stage name, 1-based epoch within the stage, optimizer step."""

    stage: str
    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int


@dataclass
class EmptyParams:
    """A method without hyperparameters of its own."""


class Method(nn.Module):
    """Base class of every registered method (see the module docstring)."""

    Params: ClassVar[type] = EmptyParams
    stage_names: ClassVar[tuple[str, ...]] = ("train",)
    defaults: ClassVar[Mapping[str, Any]] = {}
    presets: ClassVar[Mapping[str, Mapping[str, Mapping[str, Any]]]] = {}
    registered_name: ClassVar[str] = ""
    #: DDP's ``find_unused_parameters``: set True in a method whose stage leaves some trainable
    #: parameters out of its loss (DDP is rebuilt per stage, after ``enter_stage`` froze what the
    #: stage does not train, so no shipped method needs it; it costs a graph traversal per step)
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, cfg: Config, info: DataInfo, teachers: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.hp = cfg.method
        self.info = info
        # Frozen networks from other finished runs (see ``requires``). Kept in a plain dict, not as
        # submodules: they are never trained, never wrapped by DDP and never saved in checkpoints.
        self.__dict__["teachers"] = dict(teachers or {})

    # -- runs this method needs -----------------------------------------------------------
    @classmethod
    def requires(cls, cfg: Config) -> dict[str, Config]:
        """Configs of finished runs this method learns from (e.g. ``{"teacher": ...}``), by name.

        The runner resolves them before it seeds and builds this method: each is trained (or found
        finished) as an ordinary run, loaded in eval mode without gradients, and passed to the
        constructor as ``teachers[name]`` (the teacher run's own :class:`Method`). A ``Params``
        field ``<name>_checkpoint`` declared with ``metadata=FILE`` lets a checkpoint file stand in
        for the run named ``<name>`` (its SHA-256 joins the run id). Default: none."""
        return {}

    # -- stages ---------------------------------------------------------------------------
    def enter_stage(self, stage: str) -> None:
        """Called when ``stage`` starts (and again, in order, when a run resumes): build or drop
        modules and freeze what the stage does not train. Default: everything trains."""

    def evaluates_after(self, stage: str) -> bool:
        """Whether the model can classify after ``stage`` (then val is evaluated there); override
        for stages without a classifier (LiVT's MGP). Default: every stage."""
        return True

    def param_groups(self, stage: str, cfg: OptimConfig) -> list[dict]:
        """Parameter groups of the stage's optimizer (default: every trainable parameter)."""
        return param_groups(self.named_parameters(), cfg, no_decay=self.no_weight_decay())

    def no_weight_decay(self) -> set[str]:
        return set()

    def set_train_mode(self, stage: str) -> None:
        """Put modules into train mode for a stage (override to keep frozen BatchNorm in eval)."""
        self.train()

    # -- training and prediction ----------------------------------------------------------
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        # DDP calls forward(); training goes through it so gradients are synchronised.
        return self.train_step(batch, ctx)

    def predict(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def predict_heads(self, x: Tensor) -> dict[str, Tensor]:
        """Extra named predictions reported beside the main one (e.g. each expert, a CLS head)."""
        return {}

    def choose_on_val(self, evaluate: Callable[[], dict] | None) -> dict | None:
        """Called once every stage has run, before the final evaluation: choices a method makes on
        the val split after training (tau-normalisation's tau). ``evaluate()`` runs ``predict`` and
        ``predict_heads`` over val and returns :func:`ltbench.evaluate.evaluate`'s counts (None
        when the dataset has no val split). Returns what was chosen, stored in ``run.json`` as
        ``selection.chosen_on_val`` (None, the default: nothing)."""
        return None

    def predict_all(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``(predict(x), predict_heads(x))``, what an evaluation batch needs. The default calls
        both; a method whose heads come out of the same forward pass as its prediction (experts,
        CLS and DIST heads) overrides it to run the network once per batch."""
        return self.predict(x), self.predict_heads(x)

    def compile_modules(self) -> list[nn.Module]:
        """The modules ``train.compile=true`` compiles (``nn.Module.compile``: in place, so
        ``state_dict`` keys stay as they are), asked again after each ``enter_stage``. Default:
        every direct submodule with parameters, i.e. the networks; a method whose ``train_step``
        calls a network's other methods than ``forward`` gains nothing there."""
        return [m for m in self.children() if next(m.parameters(), None) is not None]

    # -- evaluation extras ----------------------------------------------------------------
    def eval_counters(self) -> EvalCounters | None:
        """Called before each evaluation pass: zero the counters ``predict`` will add to and return
        them (None, the default: the method counts nothing)."""
        return None

    def macs_per_image(self, x: Tensor) -> dict[str, float]:
        """Inference cost on the image batch ``x``, in multiply-accumulates per image, by name.

        ``all``: every head and expert the model has, run on every image. A method whose
        ``predict`` skips work per sample (routing) adds ``routed``: what ``predict`` spent on ``x``.
        The default counts the layers that run in ``predict`` (:mod:`ltbench.models.compute`)."""
        with torch.no_grad():
            return {"all": count_macs(self, lambda: self.predict(x)) / len(x)}
