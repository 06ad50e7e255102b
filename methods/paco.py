"""PaCo: Parametric Contrastive Learning (Cui et al., ICCV 2021).

Reference: the official code, dvlab-research/Parametric-Contrastive-Learning @ fe56535
(``PaCo/LT/losses.py`` ``PaCoLoss``, ``moco/builder.py`` ``MoCo``, ``paco_cifar.py``, ``paco_lt.py``,
``sh/*.sh``), and MoCo (He et al., CVPR 2020) for the key encoder and the queue. The paper's full
text was not at hand: the equation numbers below are MoCo's (Eq. 1 contrastive loss, Eq. 2 momentum update).

- **Model** (``MoCo`` with ``mlp=True``): a query encoder (ResNet backbone + projection head
  Linear-BN-ReLU-Linear to ``moco_dim``, L2-normalised) and a **key encoder**, its momentum copy;
  a **queue** of the last K keys with their labels; and the **class-wise learnable centres**, a
  linear layer on the query backbone's pooled features (the supervised branch).
- **Loss** (:class:`PaCoLoss`): each query is contrasted against the other queries and keys of the
  batch, the queue, and the C centres. Positives: the same-class samples (weight alpha) and its own
  class centre (weight beta); the centre logits are logit-adjusted by log pi during training (the
  official ``sup_logits + log(weight + 1e-9)``), so the plain centre logits are balanced at test.
- **Prediction**: the centre logits of the query backbone (``linear(feat_after_avg_q)``), without
  adjustment, as the official ``_inference``; DeiT-LT's PaCo teachers distil exactly this.
- **Two views**: ``stages.train.augment`` holds the query recipe then the key recipe (CIFAR:
  AutoAugment + Cutout / SimCLR; ImageNet-LT and iNat: RandAugment filled with ImageNet's mean
  pixel / SimCLR; the ResNeXt-50 recipe ``paper_x50`` adds grayscale and blur before RandAugment).

The official checkpoints (``moco_ckpt.pth.tar``; DeiT-LT's released PaCo+SAM teachers) load with
:meth:`PaCo.load_state_dict`, so ``deit_lt --set method.teacher=paco --set
method.teacher_checkpoint=FILE`` distils from a released teacher (classes in the dataset's order).

With SAM (``paper_sam``, ``cpu_sam``) the trainer evaluates the loss twice per step; the second pass
reuses the first pass's keys and queue (one momentum update and one enqueue per step), so the
ascent and the descent use the gradient of one loss.

Harness policy: the official codes report the best test epoch; ltbench evaluates the last epoch
(``eval.selection``). Not carried over: the official ``linear_k`` (a momentum copy of the centres
that is updated but never read), ``base_temperature`` and ``supt`` (1 in every script). No preset
yet for two official scripts: ``sh/ImageNetLT_train_X101.sh`` (the repository's own ResNeXt-101
32x4d, lr 0.03, RandAugment n 3) and ``sh/PlacesLT_train_R152.sh`` (``paco_fp16_places.py``:
torchvision's ImageNet ResNet-152 in both encoders, every convolution frozen but those of the query
encoder's last block, SimCLR views on both sides, 30 epochs with 5 warmup, fp16 training).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.config import Config, limits
from ltbench.data import Batch
from ltbench.errors import ConfigError
from ltbench.filelists import INAT_MEAN, INAT_STD
from ltbench.losses import class_prior
from ltbench.method import DataInfo, Method, StepContext
from ltbench.models import create_model
from ltbench.optim import SCHEDULES
from ltbench.precision import official_precision
from ltbench.recipes import overlay, sgd
from ltbench.registry import register_method

# ----------------------------------------------------------------------------- the loss


class PaCoLoss(nn.Module):
    """The parametric contrastive loss of the PaCo paper, as the official ``PaCoLoss`` computes it.

    Inputs: ``query`` [B, d] and ``keys`` [B, d], L2-normalised projections of the two views;
    ``queue`` [K, d] and ``queue_labels`` [K]; ``labels`` [B]; ``centre_logits`` [B, C], the
    supervised branch's logits z_i,c = c_c . f(x_i) + b_c. For query i, with the contrast set
    A = {other queries, all keys, the queue} and P(i) its same-class members of A::

        s_i,a = q_i . a / T                      (a in A; MoCo Eq. 1's similarities)
        s_i,c = z_i,c + log(pi_c + 1e-9)         (the centres, logit-adjusted)
        log p_i,x = s_i,x - log( sum_c exp s_i,c + gamma sum_{a in A} exp s_i,a )
        L_i = -( beta log p_i,y_i + alpha sum_{a in P(i)} log p_i,a ) / ( beta + alpha |P(i)| )

    and L = mean_i L_i (the official ``temperature / base_temperature`` factor is 1).
    """

    def __init__(self, counts, alpha: float, beta: float = 1.0, gamma: float = 1.0, temperature: float = 0.2) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma, self.temperature = alpha, beta, gamma, temperature
        self.register_buffer("log_prior", torch.log(class_prior(counts) + 1e-9), persistent=False)

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        queue: Tensor,
        queue_labels: Tensor,
        labels: Tensor,
        centre_logits: Tensor,
    ) -> Tensor:
        query, centre_logits = query.float(), centre_logits.float()  # fp32 under autocast
        contrast = torch.cat([query, keys.float(), queue.float()])
        contrast_labels = torch.cat([labels, labels, queue_labels])
        b, c = centre_logits.shape
        others = torch.ones(b, len(contrast), device=query.device)
        diagonal = torch.arange(b, device=query.device)
        others[diagonal, diagonal] = 0  # a query is not contrasted with itself
        logits = torch.cat([centre_logits + self.log_prior, query @ contrast.T / self.temperature], dim=1)
        # the denominator: every centre, and gamma times every other sample
        weights = torch.cat([torch.ones(b, c, device=query.device), self.gamma * others], dim=1)
        top = logits.max(dim=1, keepdim=True).values.detach()
        log_prob = logits - top - torch.log((torch.exp(logits - top) * weights).sum(dim=1, keepdim=True) + 1e-12)
        # the positives: the own centre (beta) and the same-class samples (alpha)
        same = (labels[:, None] == contrast_labels[None, :]).float() * others
        own_centre = (labels[:, None] == torch.arange(c, device=labels.device)).float()
        positives = torch.cat([self.beta * own_centre, self.alpha * same], dim=1)
        return -((positives * log_prob).sum(dim=1) / positives.sum(dim=1)).mean()


# ----------------------------------------------------------------------------- the model


class Encoder(nn.Module):
    """A ResNet backbone without its classifier and MoCo v2's projection head: returns the pooled
    features (the official ``feat_after_avg``) and the L2-normalised projection."""

    def __init__(self, arch: str, dim: int, in_chans: int, mlp: bool) -> None:
        super().__init__()
        net = create_model(arch, num_classes=dim, in_chans=in_chans)
        if not isinstance(getattr(net, "fc", None), nn.Linear):
            raise ConfigError(f"paco needs a ResNet backbone with an `fc` classifier (model.arch), got {arch!r}")
        fc, net.fc = net.fc, nn.Identity()
        self.backbone, self.num_features = net, fc.in_features
        width = fc.in_features
        # the backbone's own last layer (its initialisation included) ends the head, as MoCo's mlp "hack"
        self.head = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), fc) if mlp else fc

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.backbone(x)
        return features, F.normalize(self.head(features), dim=1)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@torch.no_grad()
def gather(t: Tensor) -> Tensor:
    """Every rank's ``t`` concatenated in rank order (``concat_all_gather``); ``t`` alone without DDP."""
    world, _ = _world()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


# ----------------------------------------------------------------------------- parameters


@dataclass
class PaCoParams:
    """``method.*`` of PaCo: MoCo's key encoder and queue, and the loss weights."""

    moco_dim: int = field(default=128, metadata=limits(1))  # projection width (--moco-dim)
    # K, keys kept (--moco-k); a multiple of the global batch
    queue_size: int = field(default=8192, metadata=limits(1))
    momentum: float = field(default=0.999, metadata=limits(0, 1))  # m of the key encoder (--moco-m)
    temperature: float = field(default=0.2, metadata=limits(above=0))  # T of the similarities (--moco-t)
    alpha: float = field(default=0.05, metadata=limits(0))  # weight of the same-class samples (--alpha)
    beta: float = field(default=1.0, metadata=limits(0))  # weight of the own class centre (--beta)
    gamma: float = field(default=1.0, metadata=limits(0))  # weight of the samples in the denominator (--gamma)
    mlp: bool = True  # MoCo v2's projection head (--mlp)


# ----------------------------------------------------------------------------- the method


@register_method("paco")
class PaCo(Method):
    """PaCo: supervised contrast with a MoCo queue and class-wise learnable centres, logit-adjusted."""

    Params = PaCoParams

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        hp, stage = self.hp, cfg.stages["train"]
        if len(stage.augment) != 2:
            raise ConfigError(
                f"paco trains on two views (query, key): stages.train.augment needs two recipes, got {stage.augment}"
            )
        if hp.queue_size % stage.batch_size or not stage.drop_last:
            raise ConfigError(
                f"paco enqueues whole batches: method.queue_size={hp.queue_size} must be a multiple of "
                f"stages.train.batch_size={stage.batch_size} and stages.train.drop_last=true"
            )
        self.encoder_q = Encoder(cfg.model.arch, hp.moco_dim, info.in_chans, hp.mlp)
        self.centres = nn.Linear(self.encoder_q.num_features, info.num_classes)  # the supervised branch
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        # the official queue: Gaussian, each of the d columns normalised over the K rows, random labels
        self.register_buffer("queue", F.normalize(torch.randn(hp.queue_size, hp.moco_dim), dim=0))
        self.register_buffer("queue_labels", torch.randint(0, info.num_classes, (hp.queue_size,)))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._ptr = 0  # queue_ptr on the host: the step never waits for the device to read it
        self.criterion = PaCoLoss(info.train_counts, hp.alpha, hp.beta, hp.gamma, hp.temperature)
        self._step_keys: tuple | None = None  # (key view, keys, queue, labels) of the step in progress

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (MoCo Eq. 2), parameters only."""
        m = self.hp.momentum
        for k, q in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            k.mul_(m).add_(q.detach(), alpha=1 - m)

    @torch.no_grad()
    def encode_keys(self, x: Tensor) -> Tensor:
        """Keys of the batch; under DDP the images are shuffled across ranks first and the keys put
        back (MoCo's shuffling BN), so no rank's BatchNorm sees its own queries' images."""
        world, rank = _world()
        if world == 1:
            return self.encoder_k(x)[1]
        everything = gather(x)
        order = torch.randperm(len(everything), device=x.device)
        dist.broadcast(order, src=0)
        mine = order.view(world, -1)[rank]
        keys = gather(self.encoder_k(everything[mine])[1])
        return keys[torch.argsort(order)].view(world, -1, keys.shape[-1])[rank]

    @torch.no_grad()
    def keys_and_queue(self, x_k: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Once per step: update the key encoder, encode the keys, take the queue as it is, then
        enqueue every rank's keys. A second call on the same batch (SAM's second pass) returns the
        first call's tensors unchanged."""
        cached = self._step_keys
        if cached is not None and cached[0] is x_k:
            return cached[1:]
        self.momentum_update()
        keys = self.encode_keys(x_k)
        queue, queue_labels = self.queue.clone(), self.queue_labels.clone()
        new_keys, new_labels = gather(keys), gather(y)
        ptr = self._ptr
        self.queue[ptr : ptr + len(new_keys)] = new_keys.to(self.queue.dtype)
        self.queue_labels[ptr : ptr + len(new_keys)] = new_labels
        self._ptr = (ptr + len(new_keys)) % self.hp.queue_size
        self.queue_ptr.fill_(self._ptr)
        self._step_keys = (x_k, keys, queue, queue_labels)
        return keys, queue, queue_labels

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Also reads the official code's checkpoints (``moco_ckpt.pth.tar``, DeiT-LT's released
        PaCo+SAM teachers): their ``state_dict`` in :meth:`official_names` (DDP's ``module.``
        prefix, MoCo's names); ltbench's own state dicts load as usual."""
        if isinstance(state_dict.get("state_dict"), Mapping):
            state_dict = state_dict["state_dict"]
        if any(k.removeprefix("module.") == "queue_l" for k in state_dict):
            state_dict = self.official_names(state_dict)
        result = super().load_state_dict(state_dict, strict, assign)
        self._ptr = int(self.queue_ptr)
        return result

    def official_names(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """An official ``MoCo`` state dict under this module's names: ``encoder_*.fc`` (the MLP
        head) is ``encoder_*.head``, the rest of each encoder is its ``backbone`` (the CIFAR
        ResNet's ``conv1`` / ``bn1``: ``stem.conv`` / ``stem.bn``), ``linear`` the ``centres``,
        ``queue_l`` the ``queue_labels``; ``linear_k`` (never read) is dropped. The official class
        order is the dataset's own, so data re-indexed by count (``data.reindex``) is refused."""
        if getattr(self.cfg.data, "reindex", False):
            raise ConfigError(
                "an official PaCo checkpoint predicts in the dataset's own class order, but data.reindex=true "
                "numbers the classes by training count: load it with data.reindex=false"
            )
        own = self.state_dict()
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            key = key.removeprefix("module.")
            top, _, rest = key.partition(".")
            if top == "linear_k":
                continue
            if top in ("encoder_q", "encoder_k"):
                if rest.startswith("fc."):
                    key = f"{top}.head.{rest[3:]}"
                else:
                    key = f"{top}.backbone.{rest}"
                    if key not in own:  # the CIFAR ResNets' stem
                        key = f"{top}.backbone.{rest.replace('conv1.', 'stem.conv.', 1).replace('bn1.', 'stem.bn.', 1)}"
            else:
                key = {"linear": "centres", "queue_l": "queue_labels"}.get(top, top) + (f".{rest}" if rest else "")
            out[key] = value.reshape(own[key].shape) if key in own else value  # queue_ptr: [1] -> []
        return out

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        x_q, x_k = batch.views[:2]
        features, query = self.encoder_q(x_q)
        keys, queue, queue_labels = self.keys_and_queue(x_k, batch.y)
        loss = self.criterion(query, keys, queue, queue_labels, batch.y, self.centres(features))
        return {"loss": loss}

    def predict(self, x: Tensor) -> Tensor:
        return self.centres(self.encoder_q.backbone(x))


# ----------------------------------------------------------------------------- schedules


@SCHEDULES.register("paco_step")
def paco_step(cfg, lr, epochs, total, spe, position):
    """``paco_cifar.py``'s ``adjust_learning_rate`` per 0-based epoch e: ``lr * (e + 1) / warmup``
    while ``e <= warmup`` (so epoch ``warmup`` runs at 1.1 lr with warmup 10), then ``lr`` times
    ``gamma`` for each milestone m with ``e >= m`` (the official ``e > 320``, ``e > 360``: 321, 361)."""
    w = cfg.warmup_epochs

    def at(step: int) -> float:
        e = position(step)
        if e <= w:
            return lr * (e + 1) / w
        return lr * cfg.gamma ** sum(1 for m in cfg.milestones if e >= m)

    return at


@SCHEDULES.register("paco_cosine")
def paco_cosine(cfg, lr, epochs, total, spe, position):
    """``paco_lt.py``'s ``adjust_learning_rate`` per 0-based epoch e: ``lr * (e + 1) / warmup`` for
    ``e < warmup``, then ``lr * (1 + cos(pi * (e - warmup + 1) / (epochs - warmup + 1))) / 2``."""
    w = cfg.warmup_epochs

    def at(step: int) -> float:
        e = position(step)
        if e < w:
            return lr * (e + 1) / w
        return lr * 0.5 * (1.0 + math.cos(math.pi * (e - w + 1) / (epochs - w + 1)))

    return at


# ----------------------------------------------------------------------------- recipes

# every official script trains in fp32: paco_lt.py's autocast needs --fp16, which only the Places-LT
# script passes; paco_cifar.py has none
FP32 = {"precision": "fp32"}

# sh/CIFAR100_train_imb0.01.sh (imb0.02, imb0.1 the same): ResNet-32, 400 epochs, batch 128 on one
# GPU, SGD 0.05 (momentum 0.9, wd 5e-4 on every parameter), 10 warmup epochs then x0.1 after 320 and
# after 360; --aug cifar100: AutoAugment + Cutout queries, SimCLR keys; moco dim 32, K 1024,
# T 0.05, alpha 0.01, beta 1, gamma 1, m 0.999; drop_last (the official loader's)
CIFAR = {
    "model": {"arch": "resnet32"},
    "method": {"moco_dim": 32, "queue_size": 1024, "temperature": 0.05, "alpha": 0.01},
    "train": FP32,
    "stages": {
        "train": {
            "epochs": 400,
            "batch_size": 128,
            "drop_last": True,
            "augment": ["autoaug_cutout", "simclr_cifar"],
            "optim": sgd(lr=0.05, weight_decay=5e-4, nesterov=False),
            "schedule": {"name": "paco_step", "per": "epoch", "warmup_epochs": 10, "milestones": [321, 361]},
        }
    },
}


def _large(weight_decay: float, **data) -> dict:
    """sh/ImageNetLT_train_R50.sh, sh/Inat_train_R50.sh (paco_lt.py): ResNet-50, 400 epochs, batch
    128 over 4 GPUs, SGD 0.02 (momentum 0.9, weight decay on every parameter), 10 warmup epochs then
    the shifted cosine; --aug randcls_sim: RandAugment (n 2, m 10, filled with ImageNet's mean pixel
    on both datasets) queries, SimCLR keys; moco dim 128, K 8192, T 0.2, alpha 0.05, beta 1, gamma
    1, m 0.999; evaluation Resize(256) + CenterCrop(224)."""
    out = {
        "model": {"arch": "resnet50"},
        "method": {"moco_dim": 128, "queue_size": 8192, "temperature": 0.2, "alpha": 0.05},
        "train": FP32,
        "stages": {
            "train": {
                "epochs": 400,
                "batch_size": 128,
                "drop_last": True,
                "augment": ["rrc_jitter_randaug_imagenet_fill", "simclr_imagenet"],
                "optim": sgd(lr=0.02, weight_decay=weight_decay, nesterov=False),
                "schedule": {"name": "paco_cosine", "per": "epoch", "warmup_epochs": 10},
            }
        },
        "eval": {"augment": "resize_center_crop"},
    }
    if data:
        out["data"] = data
    return out


PAPER = {
    "cifar100_lt": CIFAR,
    # no official CIFAR-10 script: the CIFAR-100 one, as DeiT-LT's CIFAR-10 PaCo teacher (same dims)
    "cifar10_lt": CIFAR,
    "imagenet_lt": _large(5e-4),
    # paco_lt.py normalises iNat with its own statistics, and fills RandAugment with ImageNet's mean
    "inat2018": _large(1e-4, mean=INAT_MEAN, std=INAT_STD),
}

# sh/ImageNetLT_train_X50.sh: the ResNet-50 script with torchvision's resnext50_32x4d, T 0.07
# (--moco-t, also in its --mark) and --aug randclsstack_sim (grayscale and blur before RandAugment)
PAPER_X50 = {
    "imagenet_lt": overlay(
        PAPER["imagenet_lt"],
        model={"arch": "resnext50"},
        method={"temperature": 0.07},
        stages={"train": {"augment": ["rrc_jitter_gray_blur_randaug_imagenet_fill", "simclr_imagenet"]}},
    )
}


def _with_sam(recipe: dict, **optim) -> dict:
    """``recipe`` with SAM's options in its train stage's optimizer."""
    return overlay(recipe, stages={"train": {"optim": optim}})


# DeiT-LT's teachers are PaCo + SAM "following Rangwani et al. 2022" (Saddle-LongTail), whose PaCo
# recipe is published nowhere (../shared/refs/deit_lt.md). Chosen here: PaCo's own recipe plus the SAM
# radius Saddle-LongTail's run.sh gives the same backbone on the same data for its LDAM-DRW teachers:
# CIFAR ResNet-32 rho 0.8 throughout; ResNet-50 the step schedule 0.05 / 0.1 / 0.5 / 0.5, its
# milestones (epochs 5, 60, 75 of 90) moved to the same fractions of PaCo's 400 epochs.
PAPER_SAM = {
    "cifar100_lt": _with_sam(CIFAR, sam_rho=0.8),
    "cifar10_lt": _with_sam(CIFAR, sam_rho=0.8),
    **{
        name: _with_sam(PAPER[name], sam_rho=0.05, sam_rho_milestones=[22, 267, 333], sam_rho_values=[0.1, 0.5, 0.5])
        for name in ("imagenet_lt", "inat2018")
    },
}

# Fashion-MNIST-LT on 2 CPU cores: the backbone and budget of `ce --preset cpu` (ResNet-8, 30 epochs,
# batch 128, SGD 0.1 Nesterov wd 5e-4, one-cycle), with ce's pad-crop-flip as the query view and the
# CIFAR key view; PaCo's CIFAR loss settings (dim 32, K 1024, T 0.05, alpha 0.01). Not tuned.
CPU_FMNIST = {
    "model": {"arch": "resnet8"},
    "method": {"moco_dim": 32, "queue_size": 1024, "temperature": 0.05, "alpha": 0.01},
    "stages": {
        "train": {
            "epochs": 30,
            "batch_size": 128,
            "drop_last": True,
            "augment": ["pad_crop_flip", "simclr_cifar"],
            "optim": sgd(lr=0.1, weight_decay=5e-4),
            "schedule": {"name": "onecycle", "per": "step"},
        }
    },
}
# with SAM at ldam_drw cpu_sam's radius: the teacher of `deit_lt --preset cpu --set method.teacher=paco`
CPU_FMNIST_SAM = _with_sam(CPU_FMNIST, sam_rho=0.05)

# the full board: the CIFAR recipe on fmnist_lt (ResNet-32, 400 epochs, dim 32, K 1024, T 0.05, alpha
# 0.01), in the board's `auto` precision like every full row and its CE row `ce --preset full_paco`
FULL_FMNIST = overlay(CIFAR, train={"precision": "auto"})

SMOKE = {
    "model": {"arch": "resnet8"},
    "method": {"moco_dim": 16, "queue_size": 64, "temperature": 0.1},
    "stages": {
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "drop_last": True,
            "augment": ["pad_crop_flip", "pad_crop_flip"],
            "schedule": {"name": "cosine", "warmup_epochs": 0},
        }
    },
}

PaCo.defaults = CIFAR
PaCo.presets = {
    "paper": PAPER,
    "paper_sam": PAPER_SAM,
    "paper_x50": PAPER_X50,
    "cpu": {"fmnist_lt": CPU_FMNIST},
    "cpu_sam": {"fmnist_lt": CPU_FMNIST_SAM},
    "full": {"fmnist_lt": FULL_FMNIST},
    "smoke": {"*": SMOKE},
}

# precision of the official code, training and evaluation: fp32 (see FP32 above)
official_precision(PaCo.presets, "fp32")
