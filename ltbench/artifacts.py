"""Shared artifacts: runs that other runs need (a DeiT-LT teacher), found by their run id and
trained once.

An artifact is an ordinary run: its config gives its run id and so its run directory, and its
``run.json`` says it is finished. :func:`ensure_trained` returns it, training it first if nobody
has. When several jobs ask for the same artifact at once (array tasks whose students share a
teacher), the first takes the run's lock and trains it; the others block on that lock and then
find it finished: a lock, not a race. The lock is an ``flock`` on the run directory, which holds
across the nodes of a cluster on NFSv4 and on Lustre/GPFS mounted with flock support.

Launching the artifacts first, as runs of their own (``ltbench sweep``), lets them train with all
the GPUs they ask for; an artifact trained on demand inside a multi-process job is trained by
that job's rank 0 alone while the other ranks wait.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .config import Config
from .distributed import DistInfo
from .records import RunDir, RunLockedError
from .runner import RunResult, run_dir_for, train

log = logging.getLogger("ltbench")


def ensure_trained(
    cfg: Config,
    results: str | Path | None = None,
    dist: DistInfo = DistInfo(),
    progress: bool = False,
    poll_seconds: float = 10.0,
) -> RunResult:
    """The finished run of ``cfg``: trained now if no one has trained it, waited for if another
    process is training it. ``already_done`` is False only in the process that trained it."""
    run = run_dir_for(cfg, results)
    if not dist.is_main:  # rank 0 of this job trains (or waits for) it; the other ranks wait for run.json
        while not run.is_done():
            time.sleep(poll_seconds)
        return RunResult(run, run.read_record(), already_done=True)
    while True:
        if not run.is_done() and run.is_locked():
            log.info("waiting for %s: another process is training it", run.path)
        with run.lock(wait=True):  # returns once no one is training it
            pass
        try:
            return train(cfg, results, progress=progress)  # finished: its record; else trained here
        except RunLockedError:  # another waiter took the run first: wait for that one
            continue


def final_weights(run: RunDir, map_location: str | torch.device = "cpu") -> dict:
    """The weights a finished run's results come from: ``best.pt`` under best-val selection, else
    the model in its last checkpoint."""
    if run.read_record()["selection"]["policy"] == "best-val" and run.best.exists():
        return torch.load(run.best, map_location=map_location)
    return torch.load(run.checkpoint, map_location=map_location, weights_only=False)["model"]
