"""Long-tail building blocks shared by several methods: class priors, class-balanced weights,
logit adjustment (and its offsets) and LDAM margins (each a pure function of the training class counts),
and the losses built from them: LDAM(-DRW), the logit-adjusted (Balanced Softmax) cross-entropy of
`la`, `bal_softmax`, LiVT's ablation and SHIKE's re-training, the sigmoid focal loss and the
class-balanced (softmax, sigmoid, focal) losses."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.mixup import one_hot
from torch import Tensor, nn

from ltbench.errors import DataError


def _counts(counts) -> np.ndarray:
    return np.asarray(counts, dtype=np.float64)


def _counts_with_images(counts, what: str) -> np.ndarray:
    """The class counts, refusing a class without training images: ``what`` (the log prior, a
    class-balanced weight, an LDAM margin) is infinite there and the loss would train on NaN.
    ``class_prior`` (PaCo adds 1e-9 before its log) and ``log_count_power`` (+ eps) stay finite at
    n_c = 0 and take the counts as they are."""
    n = _counts(counts)
    empty = np.flatnonzero(n == 0)
    if empty.size:
        shown = ", ".join(str(c) for c in empty[:10]) + (f", ... ({empty.size} in all)" if empty.size > 10 else "")
        raise DataError(
            f"{what} is infinite for a class without training images, and the training split has no image "
            f"of class{'es' if empty.size > 1 else ''} {shown}. Drop {'these classes' if empty.size > 1 else 'it'} "
            "from the split file (renumbering the labels that remain), or check that the split and its "
            "class list are the ones you meant."
        )
    return n


def class_prior(counts) -> Tensor:
    """pi_c = n_c / sum_k n_k (float32)."""
    n = _counts(counts)
    return torch.tensor(n / n.sum(), dtype=torch.float32)


def log_prior(counts) -> Tensor:
    """log pi_c, the offset of logit adjustment (Menon et al. 2021) and Balanced Softmax (Ren et al.
    2020, Eq. 3-4)."""
    return torch.log(class_prior(_counts_with_images(counts, "The log prior log pi_c")))


def log_count_power(counts, tau: float, eps: float = 1e-9) -> Tensor:
    """log(n_c^tau + eps) on the raw class counts: the offset of a logit adjustment with strength
    tau (equal to tau * log n_c up to eps; within a softmax, tau * log pi_c up to a constant). MDCS
    gives each expert its own tau in this form."""
    n = _counts(counts)
    return torch.tensor(np.log(np.power(n, tau) + eps), dtype=torch.float32)


def class_balanced_weights(counts, beta: float = 0.9999) -> Tensor:
    """Effective-number weights (Cui et al. 2019): w_c = 1 / E_{n_c} = (1 - beta) / (1 - beta^{n_c})
    (Eq. 2 and 6), normalised so that sum_c w_c = C (Sec. 4; the DRW weights of LDAM-DRW, RIDE and
    DeiT-LT)."""
    n = _counts_with_images(counts, "The class-balanced weight (1 - beta) / (1 - beta^n_c)")
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return torch.tensor(w / w.sum() * len(n), dtype=torch.float32)


def ldam_margins(counts, max_margin: float = 0.5) -> Tensor:
    """LDAM margins (Cao et al. 2019, Eq. 12): m_c proportional to n_c^(-1/4), largest = max_margin."""
    m = 1.0 / np.sqrt(np.sqrt(_counts_with_images(counts, "The LDAM margin n_c^(-1/4)")))
    return torch.tensor(m * (max_margin / m.max()), dtype=torch.float32)


def logit_adjust(logits: Tensor, offset: Tensor, tau: float = 1.0) -> Tensor:
    """logits + tau * offset, the offset (e.g. log pi) broadcast over the batch; in fp32 whatever
    the logits' dtype (half-precision steps near |z| = 30 are as large as the offsets)."""
    return logits.float() + tau * offset.to(logits.device, torch.float32)


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin loss, with deferred re-weighting (Cao et al. 2019, Eq. 10-12).

    Inputs: ``logits`` [B, C], already multiplied by the scale s (a cosine classifier's s * cos);
    ``target`` [B] integer class indices; ``epoch``, the 1-based epoch of the stage. With
    m_c = :func:`ldam_margins` (proportional to n_c^(-1/4), largest ``max_margin``)::

        L = sum_i w_{y_i} l_i / sum_i w_{y_i},   l_i = -log softmax(z_i - s m_{y_i} e_{y_i})_{y_i}

    the margin s * m_y taken off the target logit only. DRW: w = 1 before, and the class-balanced
    weights :func:`class_balanced_weights` (``beta``) once ``epoch > drw_epoch`` (the official
    ``idx = epoch // 160`` with 0-based epochs); ``drw_epoch < 0`` never re-weights.
    """

    def __init__(
        self, counts, scale: float = 30.0, max_margin: float = 0.5, drw_epoch: int = -1, beta: float = 0.9999
    ) -> None:
        super().__init__()
        self.drw_epoch = drw_epoch
        self.register_buffer("margins", ldam_margins(counts, max_margin) * scale, persistent=False)
        self.register_buffer("class_weights", class_balanced_weights(counts, beta), persistent=False)

    def reweighting(self, epoch: int) -> bool:
        return 0 <= self.drw_epoch < epoch

    def forward(self, logits: Tensor, target: Tensor, epoch: int) -> Tensor:
        logits = logits.float()  # margins and DRW weights in fp32, also under autocast
        margin = self.margins[target].unsqueeze(1) * F.one_hot(target, logits.shape[1])
        weight = self.class_weights if self.reweighting(epoch) else None
        return F.cross_entropy(logits - margin, target, weight=weight)


def soft_targets(target: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """Soft targets [B, C] are used as they are; integer labels [B] become label-smoothed one-hot
    rows (off value eps/C, on value 1 - eps + eps/C), as LiVT's official ``BCE_loss._one_hot``."""
    if target.ndim == 2:
        return target
    off = smoothing / num_classes
    return one_hot(target, num_classes, on_value=1.0 - smoothing + off, off_value=off)


class BalancedCE(nn.Module):
    """Logit-adjusted softmax cross-entropy (Menon et al. 2021), i.e. Balanced Softmax (Ren et al.
    2020, Eq. 4) with tau = 1: LiVT's ``Bal_CE_loss`` ablation and SHIKE's classifier re-training loss.

    Inputs: logits z [B, C]; soft targets t [B, C] or integer labels [B] (label-smoothed one-hot).

        L = -(1/B) sum_i sum_j t_ij log softmax(z_i + tau * log pi)_j

    log pi equals log n_c up to a constant, which softmax ignores (SHIKE adds log n_c). With tau = 0
    it is the soft-target cross-entropy LiVT uses as its CE baseline (``ST_CE_loss``).
    """

    def __init__(self, counts, tau: float = 1.0, smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.tau, self.smoothing = len(counts), tau, smoothing
        self.register_buffer("offset", log_prior(counts), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        t = soft_targets(target, self.num_classes, self.smoothing)
        log_p = F.log_softmax(logit_adjust(logits, self.offset, self.tau), dim=-1)
        return -(t * log_p).sum(dim=-1).mean()


def sigmoid_focal_terms(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Per-element sigmoid focal loss [B, C] (Lin et al. 2017, Eq. 4; summed over j, Cui et al. 2019,
    Eq. 12): -(1 - p_t)^gamma log p_t on every class's binary task, p = sigmoid(z), p_t = p on the
    target class and 1 - p elsewhere (Lin et al. Eq. 2).

    The modulator is computed as exp(-gamma (y z + log(1 + e^{-z}))), which equals (1 - p_t)^gamma
    and stays finite (with a finite gradient) when p_t reaches 1, as the class-balanced loss code
    does; ``gamma = 0`` is the plain binary cross-entropy."""
    y = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if gamma == 0:
        return bce
    return torch.exp(-gamma * (y * logits + F.softplus(-logits))) * bce


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., ICCV 2017), as a classification loss.

    Inputs: logits z [B, C]; integer labels [B]. With the per-element terms of
    :func:`sigmoid_focal_terms` (Eq. 4) and, when ``alpha >= 0``, Eq. 5's alpha_t (alpha on the
    target class, 1 - alpha on the others)::

        L = (1/B) sum_i sum_j alpha_t,ij (1 - p_t,ij)^gamma BCE(z_ij, y_ij)

    normalised by the number of positives (B), as Lin et al. normalise by the assigned anchors and
    the class-balanced loss code by ``sum(labels)``. ``alpha < 0`` (the default) leaves alpha out:
    the "Focal" baseline of Cui et al. 2019, i.e. :class:`ClassBalancedLoss` with beta = 0.
    """

    def __init__(self, gamma: float = 1.0, alpha: float = -1.0) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        terms = sigmoid_focal_terms(logits, target, self.gamma)
        if self.alpha >= 0:
            y = F.one_hot(target, logits.shape[1]).to(logits.dtype)
            terms = (self.alpha * y + (1 - self.alpha) * (1 - y)) * terms
        return terms.sum() / len(target)


class ClassBalancedLoss(nn.Module):
    """Class-balanced loss (Cui et al., CVPR 2019, Eq. 6: CB(p, y) = L(p, y) / E_{n_y}).

    Inputs: logits z [B, C]; integer labels [B]. Each sample's loss is weighted by its class's
    :func:`class_balanced_weights` (w_c = (1 - beta) / (1 - beta^{n_c}), normalised to sum C), the
    inverse effective number of samples; beta = 0 gives every class weight 1 (the plain losses).

    - ``softmax`` (Eq. 8):  L = (1/B) sum_i w_{y_i} CE(z_i, y_i)
    - ``sigmoid`` (Eq. 11): L = (1/B) sum_i w_{y_i} sum_j BCE(z_ij, y_ij)
    - ``focal`` (Eq. 13):   L = (1/B) sum_i w_{y_i} sum_j (1 - p_t,ij)^gamma BCE(z_ij, y_ij)

    The batch mean divides by B, not by sum_i w_{y_i} (``torch``'s weighted cross-entropy does the
    latter): the official code's ``softmax_cross_entropy(weights=...)`` and ``sum(labels)``.
    """

    def __init__(self, counts, beta: float = 0.9999, loss_type: str = "softmax", gamma: float = 1.0) -> None:
        super().__init__()
        if loss_type not in ("softmax", "sigmoid", "focal"):
            raise ValueError(f"loss_type must be softmax, sigmoid or focal, got {loss_type!r}")
        self.loss_type, self.gamma = loss_type, gamma
        self.register_buffer("class_weights", class_balanced_weights(counts, beta), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        w = self.class_weights.to(logits.dtype)[target]
        if self.loss_type == "softmax":
            per_sample = F.cross_entropy(logits, target, reduction="none")
        else:
            per_sample = sigmoid_focal_terms(logits, target, self.gamma if self.loss_type == "focal" else 0.0).sum(1)
        return (w * per_sample).mean()
