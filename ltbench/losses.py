"""Long-tail building blocks shared by several methods: class priors, class-balanced weights,
logit adjustment (and its offsets) and LDAM margins. Each is a pure function of the training class counts."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _counts(counts) -> np.ndarray:
    return np.asarray(counts, dtype=np.float64)


def class_prior(counts) -> Tensor:
    """pi_c = n_c / sum_k n_k (float32)."""
    n = _counts(counts)
    return torch.tensor(n / n.sum(), dtype=torch.float32)


def log_prior(counts) -> Tensor:
    """log pi_c, the offset of logit adjustment (Menon et al. 2021) and Balanced Softmax."""
    return torch.log(class_prior(counts))


def log_count_power(counts, tau: float, eps: float = 1e-9) -> Tensor:
    """log(n_c^tau + eps) on the raw class counts: the offset of a logit adjustment with strength
    tau (equal to tau * log n_c up to eps; within a softmax, tau * log pi_c up to a constant). MDCS
    gives each expert its own tau in this form."""
    n = _counts(counts)
    return torch.tensor(np.log(np.power(n, tau) + eps), dtype=torch.float32)


def class_balanced_weights(counts, beta: float = 0.9999) -> Tensor:
    """Effective-number weights (Cui et al. 2019): w_c = (1 - beta) / (1 - beta^{n_c}), normalised
    so that sum_c w_c = C (the DRW weights of LDAM-DRW, RIDE and DeiT-LT)."""
    n = _counts(counts)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return torch.tensor(w / w.sum() * len(n), dtype=torch.float32)


def ldam_margins(counts, max_margin: float = 0.5) -> Tensor:
    """LDAM margins (Cao et al. 2019, Eq. 12): m_c proportional to n_c^(-1/4), largest = max_margin."""
    m = 1.0 / np.sqrt(np.sqrt(_counts(counts)))
    return torch.tensor(m * (max_margin / m.max()), dtype=torch.float32)


def logit_adjust(logits: Tensor, offset: Tensor, tau: float = 1.0) -> Tensor:
    """logits + tau * offset, the offset (e.g. log pi) broadcast over the batch."""
    return logits + tau * offset.to(logits.device, logits.dtype)
