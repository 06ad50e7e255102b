"""Evaluation: per-class correct/total counts (and calibration bins) for every prediction head.

Each DDP rank evaluates a disjoint, unpadded shard (indices ``rank::world``), and counts are summed
across ranks, so every test image counts exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
import torch

from .data import Batch
from .distributed import DistInfo, sum_tensors
from .method import Method
from .metrics import CalibrationBins


@torch.no_grad()
def evaluate(
    method: Method,
    batches: Iterable[Batch],
    num_classes: int,
    dist: DistInfo,
    bins: int = 15,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict:
    """Run ``method.predict`` (and ``predict_heads``) over the batches.

    Returns ``{"heads": {name: {"correct": [...], "total": [...]}}, "calibration": {...},
    "counters": {...}}`` with plain lists, summed over ranks.
    """
    was_training = method.training
    method.eval()
    method.reset_eval_counters()
    device = next(method.parameters()).device
    counts: dict[str, torch.Tensor] = {}
    cal = torch.zeros(3, bins, dtype=torch.float64, device=device)  # count, confidence, correct
    edges = torch.linspace(0, 1, bins + 1, device=device)[1:-1]
    for batch in batches:
        with autocast or contextlib.nullcontext():
            main = method.predict(batch.x)
            heads = {"main": main, **method.predict_heads(batch.x)}
        y = batch.y
        for name, logits in heads.items():
            pred = logits.argmax(1)
            stacked = counts.setdefault(name, torch.zeros(2, num_classes, dtype=torch.int64, device=device))
            stacked[0] += torch.bincount(y[pred == y], minlength=num_classes)
            stacked[1] += torch.bincount(y, minlength=num_classes)
        conf, pred = main.float().softmax(1).max(1)
        idx = torch.bucketize(conf, edges, right=False)  # bin b holds (b/bins, (b+1)/bins]
        cal[0] += torch.bincount(idx, minlength=bins)
        cal[1] += torch.bincount(idx, weights=conf.double(), minlength=bins)
        cal[2] += torch.bincount(idx, weights=(pred == y).double(), minlength=bins)
    counters = {k: v.to(device) for k, v in method.eval_counters().items()}
    summed = sum_tensors(
        {**{f"head/{k}": v for k, v in counts.items()}, "cal": cal, **{f"counter/{k}": v for k, v in counters.items()}},
        dist,
    )
    method.train(was_training)
    heads_out = {
        k[5:]: {"correct": v[0].tolist(), "total": v[1].tolist()} for k, v in summed.items() if k.startswith("head/")
    }
    c = summed["cal"].cpu().numpy()
    calibration = CalibrationBins(
        count=c[0].astype(np.int64).tolist(), confidence=c[1].tolist(), correct=np.rint(c[2]).astype(np.int64).tolist()
    )
    counter_out = {k[8:]: v.cpu().tolist() for k, v in summed.items() if k.startswith("counter/")}
    return {"heads": heads_out, "calibration": calibration.__dict__, "ece": calibration.ece(), "counters": counter_out}
