"""Optimizers, parameter groups and learning-rate schedules, by name.

Schedules are pure functions of the optimizer step (as in timm), so resuming needs only the step
count. Each parameter group may carry an ``lr_scale`` (layer-wise lr decay); the trainer sets
``group["lr"] = schedule(step) * group["lr_scale"]`` before every optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .config import OptimConfig, ScheduleConfig
from .errors import ConfigError
from .registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("schedule")


# ----------------------------------------------------------------------------- optimizers


def fused_or_foreach(groups: list[dict]) -> dict:
    """``fused=True`` when torch has fused kernels for every parameter's device (CUDA, CPU, ...),
    else ``foreach=True``: one kernel for all parameters instead of one per parameter, and under
    AMP GradScaler hands the fused step its scale and inf flag on the device instead of reading
    them back (``.item()``) before every step."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    supported = set(_get_fused_kernels_supported_devices())
    params = [p for g in groups for p in g["params"]]
    if all(p.device.type in supported and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """SGD with (optionally Nesterov) momentum."""
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
        **fused_or_foreach(groups),
    )


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(
        groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, **fused_or_foreach(groups)
    )


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    cfg: OptimConfig,
    no_decay: Iterable[str] = (),
    layer_id: Callable[[str], int] | None = None,
    num_layers: int = 0,
) -> list[dict]:
    """Group trainable parameters by (weight decay, lr scale).

    Without decay: biases and 1-D parameters when ``cfg.no_decay_1d``, and names in ``no_decay``
    (e.g. ``pos_embed``, ``cls_token``). With ``cfg.layer_decay < 1`` and a ``layer_id`` function,
    a parameter of layer i gets ``lr_scale = layer_decay ** (num_layers - i)``.
    """
    no_decay = set(no_decay)
    groups: dict[tuple[float, float], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        skip = name in no_decay or (cfg.no_decay_1d and (p.ndim <= 1 or name.endswith(".bias")))
        wd = 0.0 if skip else cfg.weight_decay
        scale = 1.0
        if cfg.layer_decay < 1.0:
            if layer_id is None:
                raise ConfigError("optim.layer_decay < 1 needs a method that defines layer ids (a ViT)")
            scale = cfg.layer_decay ** (num_layers - layer_id(name))
        group = groups.setdefault((wd, scale), {"params": [], "weight_decay": wd, "lr_scale": scale})
        group["params"].append(p)
    if not groups:
        raise ConfigError("this stage has no trainable parameters")
    return list(groups.values())


def effective_lr(cfg: OptimConfig, effective_batch: int) -> float:
    """``lr``, or ``lr * effective_batch / lr_ref_batch`` when ``lr`` is a base lr (MAE's blr)."""
    return cfg.lr * effective_batch / cfg.lr_ref_batch if cfg.lr_ref_batch > 0 else cfg.lr


def build_optimizer(groups: list[dict], cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(groups, cfg, lr)


# ----------------------------------------------------------------------------- SAM


def sam_rho(cfg: OptimConfig, epoch: int) -> float:
    """The SAM radius in 0-based ``epoch``: ``sam_rho``, then from each ``sam_rho_milestones[i]``
    on ``sam_rho_values[i]`` (Saddle-LongTail's "step" rho schedule)."""
    if len(cfg.sam_rho_milestones) != len(cfg.sam_rho_values):
        raise ConfigError(
            f"optim.sam_rho_milestones {cfg.sam_rho_milestones} and optim.sam_rho_values "
            f"{cfg.sam_rho_values} must have the same length (one rho per milestone)"
        )
    rho = cfg.sam_rho
    for milestone, value in zip(cfg.sam_rho_milestones, cfg.sam_rho_values):
        if epoch >= milestone:
            rho = value
    return rho


class SharpnessAware:
    """The ascent half of sharpness-aware minimisation (Foret et al. 2021), around any optimizer.

    With g the gradient of the loss at w (over every parameter of the optimizer, as one vector),
    :meth:`ascend` moves each parameter to ``w + rho * g / (||g||_2 + 1e-12)``; the caller then
    computes the gradient there and :meth:`restore` puts w back before the optimizer's ordinary
    step uses that gradient. As in Saddle-LongTail's ``sam.py``: the ascent uses the raw loss
    gradient (weight decay enters only the optimizer step), parameters without a gradient stay, and
    BatchNorm layers stay in train mode for both passes (their running statistics are updated twice
    per step). Under DDP the gradient is already averaged over ranks, so every rank takes the same
    ascent step.

    Every operation is a ``torch._foreach_*`` kernel over all parameters and nothing is read back
    to the host: w is copied into buffers allocated once, and the copy back is exact.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.moved: list[torch.Tensor] = []
        self.buffers: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def ascend(self, rho: float, inv_scale: torch.Tensor | None = None) -> torch.Tensor | None:
        """Climb from w. ``inv_scale`` (AMP): the gradients are loss-scaled; they are unscaled
        first and the returned 0-d tensor is 1 where one of them is not finite (the climb is then
        zero and the caller must skip the step), else 0."""
        self.moved = [p for p in self.params if p.grad is not None]
        if not self.moved:
            return None
        grads = [p.grad for p in self.moved]
        found_inf = None
        if inv_scale is not None:  # GradScaler.unscale_'s kernel: unscale and flag on the device
            found_inf = torch.zeros((), device=grads[0].device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale.to(grads[0].device))
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = rho / (norm + 1e-12)
        if found_inf is not None:
            scale = torch.where(found_inf > 0, torch.zeros_like(scale), scale)
        saved = [self.buffers.setdefault(id(p), torch.empty_like(p)) for p in self.moved]
        torch._foreach_copy_(saved, self.moved)
        climb = torch._foreach_mul(grads, scale)
        if found_inf is not None:  # 0 * inf is nan: a skipped step must not climb at all
            for c in climb:
                torch.nan_to_num_(c, nan=0.0, posinf=0.0, neginf=0.0)
        torch._foreach_add_(self.moved, climb)
        return found_inf

    @torch.no_grad()
    def restore(self) -> None:
        if self.moved:
            torch._foreach_copy_(self.moved, [self.buffers[id(p)] for p in self.moved])
        self.moved = []


# ----------------------------------------------------------------------------- schedules

Schedule = Callable[[int], float]


def make_schedule(
    cfg: ScheduleConfig, lr: float, steps_per_epoch: int, epochs: int, batches_per_epoch: int = 0, accum: int = 1
) -> Schedule:
    """The lr at each optimizer step (0-based) of a stage.

    Schedules see a position in epochs: the whole epoch (``per="epoch"``), the fraction of the
    epoch's optimizer steps done (``per="step"``), or of its batches (``per="batch"``: the DeiT
    codes' ``epoch + batch / batches`` at the first batch of each accumulation window, and at the
    epoch's last batch for the last window, where they step the scheduler once more).
    """
    factory = SCHEDULES.get(cfg.name)
    total = max(1, steps_per_epoch * epochs)

    def position(step: int) -> float:
        epoch, k = divmod(step, steps_per_epoch)
        if cfg.per == "epoch":
            return float(epoch)
        if cfg.per == "batch" and batches_per_epoch:
            first = batches_per_epoch - 1 if k == steps_per_epoch - 1 else k * accum
            return epoch + first / batches_per_epoch
        return step / steps_per_epoch

    return factory(cfg, lr, epochs, total, steps_per_epoch, position)


@SCHEDULES.register("constant")
def constant(cfg, lr, epochs, total, spe, position) -> Schedule:
    """The same lr throughout."""
    return lambda step: lr


@SCHEDULES.register("cosine")
def cosine(cfg, lr, epochs, total, spe, position) -> Schedule:
    """Linear warmup from ``warmup_from * lr`` over ``warmup_epochs``, then a half-cycle cosine
    down to ``min_lr`` (MAE/LiVT: ``lr * t / warmup``, then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - warmup) / (epochs - warmup))) / 2``)."""
    w = cfg.warmup_epochs

    def at(step: int) -> float:
        t = position(step)
        if t < w:
            return lr * (cfg.warmup_from + (1 - cfg.warmup_from) * t / w)
        span = max(epochs - w, 1e-12)
        return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * (t - w) / span))

    return at


@SCHEDULES.register("timm_cosine")
def timm_cosine(cfg, lr, epochs, total, spe, position) -> Schedule:
    """timm's ``CosineLRScheduler`` (one cycle, ``t_initial = epochs``, no warmup prefix), as the
    DeiT codes build it: linear warmup from ``warmup_from * lr`` over ``warmup_epochs``, then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * t / epochs)) / 2``: the cosine runs over the whole
    schedule, warmup included, so it has already left ``lr`` when the warmup ends."""
    w, start = cfg.warmup_epochs, cfg.warmup_from * lr

    def at(step: int) -> float:
        t = position(step)
        if t < w:
            return start + t * (lr - start) / w
        return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / epochs))

    return at


@SCHEDULES.register("step")
def step_decay(cfg, lr, epochs, total, spe, position) -> Schedule:
    """Warmup ``lr * (e + 1) / warmup`` for epoch e < warmup, then ``lr * gamma ** k`` with k the
    number of milestones <= e (the "CustomLR" of RIDE, MDCS and LDAM-DRW)."""
    w = cfg.warmup_epochs

    def at(step: int) -> float:
        e = position(step)
        if e < w:
            return lr * (e + 1) / w
        return lr * cfg.gamma ** sum(1 for m in cfg.milestones if e >= m)

    return at


@SCHEDULES.register("onecycle")
def one_cycle(cfg, lr, epochs, total, spe, position) -> Schedule:
    """torch's OneCycleLR (two phases, cosine annealing): lr/div_factor up to lr over
    ``pct_start`` of the steps, then down to lr/(div_factor*final_div_factor)."""
    initial = lr / cfg.div_factor
    final = initial / cfg.final_div_factor
    peak_step = float(cfg.pct_start * total) - 1
    end_step = float(total - 1)

    def anneal(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def at(step: int) -> float:
        if step <= peak_step:
            return anneal(initial, lr, step / peak_step if peak_step > 0 else 1.0)
        return anneal(lr, final, (step - peak_step) / max(end_step - peak_step, 1e-12))

    return at
