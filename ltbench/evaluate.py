"""Evaluation: per-class correct/total counts (and calibration bins) for every prediction head,
and what a finished run cost (:func:`compute_record`).

Each DDP rank evaluates a disjoint, unpadded shard (indices ``rank::world``), and counts are summed
across ranks, so every test image counts exactly once. Counts are integers (exact on any device);
the calibration's confidence sums are added on the CPU in a fixed order (no float atomics), so
they too are the same on every evaluation of the same logits, on the GPU as on the CPU.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterable, Mapping

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
    """Run ``method.predict`` and ``predict_heads`` over the batches (one ``predict_all`` call each).

    Returns ``{"heads": {name: {"correct": [...], "total": [...]}}, "calibration": {...},
    "calibration_by_class": {...} (its non-empty (class, bin) cells), "ece": ..., "counters": {...},
    "summary": {...}}`` with plain lists, summed over ranks;
    ``counters`` and ``summary`` come from :meth:`Method.eval_counters`.
    """
    was_training = method.training
    method.eval()
    tally = method.eval_counters()
    device = next(method.parameters()).device
    counts: dict[str, torch.Tensor] = {}
    # count, confidence, correct per (true class, confidence bin): ECE overall and per shot group
    cal = torch.zeros(3, num_classes * bins, dtype=torch.float64, device=device)
    edges = torch.linspace(0, 1, bins + 1, device=device)[1:-1]
    for batch in batches:
        with autocast or contextlib.nullcontext():
            main, extra = method.predict_all(batch.x)
            heads = {"main": main, **extra}
        y = batch.y
        for name, logits in heads.items():
            pred = logits.argmax(1)
            stacked = counts.setdefault(name, torch.zeros(2, num_classes, dtype=torch.int64, device=device))
            stacked[0] += torch.bincount(y[pred == y], minlength=num_classes)
            stacked[1] += torch.bincount(y, minlength=num_classes)
        conf, pred = main.float().softmax(1).max(1)
        idx = y * bins + torch.bucketize(conf, edges, right=False)  # bin b holds (b/bins, (b+1)/bins]
        n = num_classes * bins
        cal[0] += torch.bincount(idx, minlength=n)  # integer counts: exact in any order
        cal[2] += torch.bincount(idx[pred == y], minlength=n)
        # float sums on the CPU, in order: a weighted bincount on CUDA adds with atomics, in no fixed order
        cal[1] += torch.bincount(idx.cpu(), weights=conf.double().cpu(), minlength=n).to(device)
    counters = {k: v.detach().clone().to(device) for k, v in (tally.tensors if tally else {}).items()}
    summed = sum_tensors(
        {**{f"head/{k}": v for k, v in counts.items()}, "cal": cal, **{f"counter/{k}": v for k, v in counters.items()}},
        dist,
    )
    method.train(was_training)
    heads_out = {
        k[5:]: {"correct": v[0].tolist(), "total": v[1].tolist()} for k, v in summed.items() if k.startswith("head/")
    }
    by_class = summed["cal"].cpu().numpy().reshape(3, num_classes, bins)
    c = by_class.sum(1)
    calibration = CalibrationBins(
        count=c[0].astype(np.int64).tolist(), confidence=c[1].tolist(), correct=np.rint(c[2]).astype(np.int64).tolist()
    )
    cls, where = np.nonzero(by_class[0])  # sparse: iNaturalist has 8,142 classes of 3 test images
    calibration_by_class = {
        "class": cls.tolist(),
        "bin": where.tolist(),
        "count": by_class[0, cls, where].astype(np.int64).tolist(),
        "confidence": by_class[1, cls, where].tolist(),
        "correct": np.rint(by_class[2, cls, where]).astype(np.int64).tolist(),
    }
    counter_out = {k[8:]: v.cpu().tolist() for k, v in summed.items() if k.startswith("counter/")}
    summary = tally.summarize(counter_out) if tally else {}
    return {
        "heads": heads_out,
        "calibration": calibration.__dict__,
        "calibration_by_class": calibration_by_class,
        "ece": calibration.ece(),
        "counters": counter_out,
        "summary": summary,
    }


def peak_memory(device: torch.device) -> dict:
    """This process's peak memory in MiB: CUDA's max allocated on a GPU, else the peak resident set."""
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "mib": torch.cuda.max_memory_allocated(device) / 2**20}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"kind": "cpu_peak_rss", "mib": rss / (2**20 if sys.platform == "darwin" else 2**10)}


@torch.no_grad()
def compute_record(method: Method, epochs: Mapping[str, int], device: torch.device, batches: Iterable[Batch]) -> dict:
    """The ``compute`` section of run.json, which the report reads and never recomputes: parameters
    (total, and trainable in the last stage), inference MACs per image measured on the first batch of
    ``batches`` (:meth:`Method.macs_per_image`), this process's peak memory and epochs per stage."""
    x = next(iter(batches)).x
    was_training = method.training
    method.eval()
    macs = method.macs_per_image(x)
    method.train(was_training)
    params = list(method.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {
        "params": {"total": sum(p.numel() for p in params), "trainable": trainable},
        "macs_per_image": macs,
        "peak_memory": peak_memory(device),
        "epochs": dict(epochs),
    }
