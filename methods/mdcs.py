"""MDCS: More Diverse Experts with Consistency Self-distillation (Zhao et al., ICCV 2023).

Reference: the official code, fistyee/MDCS @ 1a1d54e (``model/loss.py::MDCSLoss``,
``trainer/trainer.py``, ``train.py``, ``train_places.py``, ``model/model.py``, ``configs/``,
``data_loader/*``); notes in ``../shared/refs/mdcs.md``.

- **Model**: RIDE's multi-expert ResNet (:mod:`ltbench.models.multi_expert`) with cosine
  classifiers (s = 30) and three experts, no router.
- **Views**: every training image gives a weak and a strong view (``augment = [weak, strong]``);
  both go through one forward pass (``trainer.py``: ``cat([view1, view2])``), so BatchNorm sees
  2B rows and the configured batch size counts images. The official 4-GPU configs (ImageNet-LT,
  Places-LT, iNat) run that pass under ``DataParallel``, which splits the 2B rows into four chunks:
  two replicas see only weak rows, two only strong rows, so each view is batch-normalised with its
  own statistics and the running statistics are replica 0's, i.e. weak rows only.
  ``method.bn_per_view=true`` (the ImageNet-scale ``paper`` presets) reproduces this per view:
  the weak view normalised over its B rows and updating the running statistics, then the strong
  view over its own B rows, leaving them untouched (the official chunks are B/2 rows each).
- **Diversity loss (DL)**: expert k learns a cross-entropy on its logits shifted by
  log(n^tau_k), tau = (-0.5, 1, 2.5): a head-, a balanced and a tail-biased expert.
- **Consistency self-distillation (CS)** with confident instance sampling: on the weak-view samples
  an expert already classifies correctly, its strong-view prediction is pulled towards its
  (detached) weak-view prediction by a KL term, ramped in over the first epochs.
- **Prediction**: the mean of the raw expert logits, no adjustment (``test.py``); each expert is
  reported too.

Harness policy: the official configs monitor "max val_accuracy" on the test set (CIFAR) and keep
the best epoch; ltbench evaluates the last epoch (``eval.selection=last``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltbench.config import Config, OptimConfig
from ltbench.data import Batch
from ltbench.errors import ConfigError
from ltbench.filelists import INAT_MEAN, INAT_STD
from ltbench.losses import log_count_power, logit_adjust
from ltbench.method import DataInfo, Method, StepContext
from ltbench.models import create_model
from ltbench.models.multi_expert import MultiExpertNet, load_resnet_weights
from ltbench.optim import param_groups
from ltbench.precision import official_precision
from ltbench.recipes import sgd, step_lr
from ltbench.registry import register_method

# ----------------------------------------------------------------------------- the MDCS loss


class MDCSLoss(nn.Module):
    """MDCS's training loss: diversity loss plus consistency self-distillation (``model/loss.py``).

    Inputs: ``weak`` and ``strong`` [B, E, C], the (already s-scaled) logits of each of the E
    experts on the weak and on the strong view of the same B images; ``target`` [B] integer class
    indices; ``epoch``, the 1-based epoch of the stage (the official trainer's epoch, counted from 1).

    With n_c the raw training counts, expert k's adjusted logits are
    zh_k = z_k + log(n^{tau_k} + eps) (eps = 1e-9), and with p = softmax(zh / T)::

        L_DL = sum_k CE(zh_k, y)                     mean over all 2B rows (both views)
        M_k  = { b : argmax zh_k^weak[b] = y_b }      confident instance sampling, weak view
        L_CS = sum_k [|M_k| > 0] T^2 / |M_k| sum_{b in M_k} KL(p_k^weak[b] || p_k^strong[b])
        L    = L_DL + w * min(epoch / warmup, 1) * L_CS

    The weak-view distribution is a constant (detached): through L_CS gradients reach only the
    strong-view logits. Official values: tau = (-0.5, 1, 2.5), w = 0.6, warmup = 20, T = 1.
    """

    def __init__(
        self,
        counts,
        taus: tuple[float, ...] = (-0.5, 1.0, 2.5),
        cs_weight: float = 0.6,
        cs_warmup: int = 20,
        temperature: float = 1.0,
        eps: float = 1e-9,
    ) -> None:
        super().__init__()
        self.cs_weight = cs_weight
        self.cs_warmup = cs_warmup
        self.temperature = temperature
        # loss.py l. 312, 361-365: log(pow(n, tau_k) + 1e-9) on the raw counts, one tau per expert
        offsets = torch.stack([log_count_power(counts, tau, eps) for tau in taus])  # [E, C]
        self.register_buffer("offsets", offsets, persistent=False)

    def cs_factor(self, epoch: int) -> float:
        """The weight of L_CS at a 1-based epoch: w * min(epoch / warmup, 1) (loss.py l. 324, 421)."""
        ramp = min(epoch / self.cs_warmup, 1.0) if self.cs_warmup > 0 else 1.0
        return self.cs_weight * ramp

    def forward(self, weak: Tensor, strong: Tensor, target: Tensor, epoch: int) -> Tensor:
        if weak.shape[1] != self.offsets.shape[0]:
            raise ValueError(f"{weak.shape[1]} experts but {self.offsets.shape[0]} taus")
        weak = logit_adjust(weak.float(), self.offsets)  # per-expert logit adjustment (DL)
        strong = logit_adjust(strong.float(), self.offsets)
        both_targets = torch.cat([target, target])
        t = self.temperature
        loss = weak.new_zeros(())
        cs = weak.new_zeros(())
        for k in range(weak.shape[1]):
            zw, zs = weak[:, k], strong[:, k]
            # l. 426-432: CE of the adjusted logits over all 2B rows (weak then strong), mean reduction
            loss = loss + F.cross_entropy(torch.cat([zw, zs]), both_targets)
            # l. 393-406: confident instance sampling, the weak-view rows whose adjusted argmax is the label
            confident = (zw.argmax(1) == target).to(zw.dtype)
            # l. 369-388, 406-419: teacher = detached weak view, student = strong view, kl_div batchmean
            teacher = F.softmax(zw.detach() / t, dim=1)
            kl = F.kl_div(F.log_softmax(zs / t, dim=1), teacher, reduction="none").sum(1)
            # batchmean over the confident rows; no confident row contributes 0 (the official "if")
            cs = cs + (kl * confident).sum() / confident.sum().clamp(min=1.0) * (t * t)
        return loss + self.cs_factor(epoch) * cs


# ----------------------------------------------------------------------------- BatchNorm per view


@contextmanager
def batch_statistics_only(net: nn.Module) -> Iterator[None]:
    """Inside, every BatchNorm layer of ``net`` normalises with the statistics of its input batch
    (also in training mode) and leaves its running statistics and batch counter unchanged."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for layer in layers:
        layer.track_running_stats = False  # forward then passes no running buffers to F.batch_norm
    try:
        yield
    finally:
        for layer in layers:
            layer.track_running_stats = True


# ----------------------------------------------------------------------------- the method


@dataclass
class MDCSParams:
    # one logit-adjustment strength per expert (loss.py hard-codes these three; the configs' "tau"
    # is never read); the number of experts is len(taus)
    taus: list[float] = field(default_factory=lambda: [-0.5, 1.0, 2.5])
    reduce_dimension: bool = True  # expert widths 24/48 (CIFAR) or 192/384 planes (ImageNet)
    use_norm: bool = True  # cosine classifier with `scale`; else nn.Linear (scale 1)
    scale: float = 30.0
    cs_weight: float = 0.6  # weight of the consistency self-distillation
    cs_warmup: int = 20  # epochs of its linear ramp (1-based: epoch / cs_warmup)
    temperature: float = 1.0  # of the CS softmaxes
    backbone_lr_scale: float = 1.0  # lr of everything but the classifiers, relative to optim.lr
    # BatchNorm over each view apart, running statistics from the weak view only (the official
    # 4-GPU DataParallel runs); false: over both views at once (the official 1-GPU CIFAR runs)
    bn_per_view: bool = False
    # a torchvision-layout ResNet state dict (e.g. the OLTR ImageNet ResNet-152 of Places-LT):
    # trunk from conv1..layer2, every expert from layer3/layer4; "" = train from scratch
    init_checkpoint: str = ""


@register_method("mdcs")
class MDCS(Method):
    """MDCS: multi-expert ResNet, per-expert logit adjustment + consistency self-distillation on two views."""

    Params = MDCSParams

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        super().__init__(cfg, info)
        hp = self.hp
        views = cfg.stages["train"].augment
        if len(views) != 2:
            raise ConfigError(
                f"stages.train.augment={views}: MDCS needs exactly two views, weak then strong "
                "(e.g. augment=pad_crop_flip_rotate,autoaug_cutout)"
            )
        if not hp.taus:
            raise ConfigError("method.taus is empty: MDCS needs one tau per expert (official: -0.5,1,2.5)")
        self.net: MultiExpertNet = create_model(
            cfg.model.arch,
            num_classes=info.num_classes,
            in_chans=info.in_chans,
            num_experts=len(hp.taus),
            reduce_dimension=hp.reduce_dimension,
            use_norm=hp.use_norm,
            scale=hp.scale,
        )
        if not isinstance(self.net, MultiExpertNet):
            raise ConfigError(
                f"model.arch={cfg.model.arch!r} is not a multi-expert backbone; MDCS needs one of "
                "resnet32_experts, resnet8_experts, resnet50_experts, resnext50_experts, resnet152_experts"
            )
        if hp.init_checkpoint:
            self.load_init_checkpoint(hp.init_checkpoint)
        self.criterion = MDCSLoss(info.train_counts, tuple(hp.taus), hp.cs_weight, hp.cs_warmup, hp.temperature)

    def load_init_checkpoint(self, path: str) -> None:
        """Start from a single pretrained ResNet (model.py ``init_weights(..., caffe=True)``)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"method.init_checkpoint={path!r} does not exist") from None
        state = state.get("state_dict", state)
        try:
            load_resnet_weights(self.net, state)
        except (KeyError, ValueError) as err:
            raise ConfigError(
                f"method.init_checkpoint={path!r} does not fit model.arch={self.cfg.model.arch!r}: {err}. It must be "
                "a torchvision-layout ResNet state dict of the same depth, for an ImageNet-family *_experts model"
            ) from None

    def param_groups(self, stage: str, cfg: OptimConfig) -> list[dict]:
        """Classifiers at optim.lr, everything else at backbone_lr_scale times it (train_places.py)."""
        if self.hp.backbone_lr_scale == 1.0:
            return super().param_groups(stage, cfg)
        body = param_groups(((n, p) for n, p in self.net.named_parameters() if not n.startswith("heads.")), cfg)
        for group in body:
            group["lr_scale"] *= self.hp.backbone_lr_scale
        return body + param_groups(self.net.heads.named_parameters(), cfg)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, Tensor]:
        weak, strong = batch.views
        if self.hp.bn_per_view:  # DataParallel's replicas: each view alone, running statistics from weak
            weak_logits = self.net(weak).logits
            with batch_statistics_only(self.net):
                strong_logits = self.net(strong).logits
        else:  # one pass: BatchNorm sees 2B rows
            logits = self.net(torch.cat([weak, strong])).logits
            weak_logits, strong_logits = logits[: len(batch)], logits[len(batch) :]
        return {"loss": self.criterion(weak_logits, strong_logits, batch.y, ctx.epoch)}

    def predict(self, x: Tensor) -> Tensor:
        return self.net(x).mean_logits  # test.py: mean of the raw expert logits

    def predict_heads(self, x: Tensor) -> dict[str, Tensor]:
        return self.predict_all(x)[1]

    def predict_all(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.net(x)
        return out.mean_logits, {f"expert{k + 1}": out.logits[:, k] for k in range(out.logits.shape[1])}


# ----------------------------------------------------------------------------- recipes


def _cosine() -> dict:
    # CosineAnnealingLR(T_max = epochs, eta_min = 0), stepped once per epoch, no warmup
    return {"name": "cosine", "per": "epoch", "warmup_epochs": 0, "min_lr": 0.0}


CIFAR_VIEWS = ["pad_crop_flip_rotate", "autoaug_cutout"]  # cifar_data_loaders.py: weak, strong
IMAGENET_VIEWS = ["rrc_flip_jitter", "rrc_jitter_randaug"]  # imagenet_lt_data_loaders.py, places_loader.py


def _cifar(epochs: int, milestones: list[int]) -> dict:
    # configs/config_cifar{10,100}_ir{100,50}_mdcs.json (identical but for the dataset)
    return {
        "model": {"arch": "resnet32_experts"},
        "stages": {
            "train": {
                "epochs": epochs,
                "batch_size": 64,
                "augment": CIFAR_VIEWS,
                "optim": sgd(lr=0.1, weight_decay=5e-4),
                "schedule": step_lr(milestones=milestones, gamma=0.1, warmup=20),
            }
        },
    }


CIFAR = _cifar(400, [200, 320, 380])
CIFAR_200 = _cifar(200, [160, 180])  # the configs' comment: "200 epoch: step1:160, step2:180"


# the official ImageNet-LT, Places-LT and iNat configs: "n_gpu": 4 (DataParallel, see bn_per_view)
PER_VIEW_BN = {"bn_per_view": True}


def _imagenet_lt(arch: str, epochs: int) -> dict:
    # configs/config_imagenet_lt_{resnet50,resnext50}_mdcs_e{180,400}.json
    return {
        "model": {"arch": arch},
        "method": dict(PER_VIEW_BN),
        "stages": {
            "train": {
                "epochs": epochs,
                "batch_size": 256,
                "augment": IMAGENET_VIEWS,
                "optim": sgd(lr=0.1, weight_decay=5e-4),
                "schedule": _cosine(),
            }
        },
    }


# configs/config_places_lt_resnet152_mdcs.json + train_places.py: lr 0.01 for the classifiers,
# share_lr 0.001 for everything else, wd 4e-4, x0.1 at epochs 10 and 20, no warmup; classes
# re-indexed by count (places_loader.py). The official run starts from the OLTR ImageNet-pretrained
# ResNet-152 (method.init_checkpoint); left empty here, this preset trains from scratch, which is
# NOT the paper's setting.
PLACES = {
    "model": {"arch": "resnet152_experts"},
    "method": {"reduce_dimension": False, "backbone_lr_scale": 0.1, **PER_VIEW_BN},
    "data": {"reindex": True},
    "stages": {
        "train": {
            "epochs": 30,
            "batch_size": 64,
            "augment": IMAGENET_VIEWS,
            "optim": sgd(lr=0.01, weight_decay=4e-4),
            "schedule": step_lr(milestones=[10, 20], gamma=0.1, warmup=0),
        }
    },
}


def _inat(epochs: int, milestones: list[int]) -> dict:
    # configs/config_iNaturalist_resnet50_mdcs.json. The released iNat loader yields one view of
    # RandomResizedCrop + flip and cannot feed the two-view trainer: no official iNat run exists to
    # match. Here the weak view is that loader's transform and the strong view ImageNet-LT's; both
    # normalised with the loader's iNat statistics (inaturalist_data_loaders.py).
    return {
        "model": {"arch": "resnet50_experts"},
        "method": dict(PER_VIEW_BN),
        "data": {"mean": INAT_MEAN, "std": INAT_STD},
        "stages": {
            "train": {
                "epochs": epochs,
                "batch_size": 512,
                "augment": ["rrc_flip", "rrc_jitter_randaug"],
                "optim": sgd(lr=0.2, weight_decay=2e-4),
                "schedule": step_lr(milestones=milestones, gamma=0.1, warmup=5),
            }
        },
    }


INAT = _inat(400, [200, 300, 380])
INAT_100 = _inat(100, [60, 80])  # the config's comment: "100 epoch: step1:60, step2:80"

# The CIFAR recipe shrunk for Fashion-MNIST-LT on 2 CPU cores, on the epoch budget and schedule family
# of the rows it is compared with (`ride --preset cpu` and `ce --preset cpu_ride`: 20 epochs, step
# decays, 2 warmup epochs). The official 200-epoch CIFAR variant (CIFAR_200: warmup 20, x0.1 at 160
# and 180) scaled by 1/10: warmup 2, x0.1 at 16 and 18; the CS weight ramp of 20 epochs of 400 becomes
# 1 epoch. Batch 64 images (128 rows, both views in one pass) and the CIFAR views as on CIFAR.
# An MDCS epoch costs about four `ce` epochs (three experts, two views, per-image AutoAugment+Cutout).
# ResNet-8 experts, as every cpu preset (see ce.CPU_FMNIST).
CPU_FMNIST = {
    "model": {"arch": "resnet8_experts"},
    "method": {"cs_warmup": 1},
    "stages": {
        "train": {
            "epochs": 20,
            "batch_size": 64,
            "augment": CIFAR_VIEWS,
            "optim": sgd(lr=0.1, weight_decay=5e-4),
            "schedule": step_lr(milestones=[16, 18], gamma=0.1, warmup=2),
        }
    },
}

MDCS.defaults = CIFAR
# ImageNet-LT ships four configs (ResNet-50 / ResNeXt-50, 180 / 400 epochs); the README's only
# ImageNet-LT command ("run such as resnext50 400 epochs") is config_imagenet_lt_resnext50_mdcs_e400:
# that is `paper`, the other three are named
MDCS.presets = {
    # CIFAR recipes: official runs on one GPU (batch 128 per BatchNorm); several GPUs: train.sync_bn=true
    "paper": {
        "cifar10_lt": CIFAR,
        "cifar100_lt": CIFAR,
        "imagenet_lt": _imagenet_lt("resnext50_experts", 400),
        "places_lt": PLACES,
        "inat2018": INAT,
    },
    "paper_e180": {"imagenet_lt": _imagenet_lt("resnext50_experts", 180)},
    "paper_r50": {"imagenet_lt": _imagenet_lt("resnet50_experts", 400)},
    "paper_r50_e180": {"imagenet_lt": _imagenet_lt("resnet50_experts", 180)},
    "paper_short": {"cifar10_lt": CIFAR_200, "cifar100_lt": CIFAR_200, "inat2018": INAT_100},
    "cpu": {"fmnist_lt": CPU_FMNIST},
    "full": {"fmnist_lt": CIFAR},  # the full board: the official 400-epoch CIFAR recipe on fmnist_lt
    "smoke": {
        "*": {
            "method": {"cs_warmup": 2},
            "stages": {
                "train": {
                    "epochs": 2,
                    "batch_size": 32,
                    "augment": ["default", "default"],
                    "schedule": {"name": "cosine", "warmup_epochs": 0},
                }
            },
        }
    },
}

# precision of the official code, training and evaluation: fistyee/MDCS trainer/trainer.py (the RIDE
# template) autocasts only under utils.use_fp16, False as in RIDE (fp32)
official_precision(MDCS.presets, "fp32")
