"""No host sync per training step: over a whole run of every registered method's smoke preset
(plain, with SAM, with gradient accumulation), the calls that read a tensor back to the host
(``Tensor.item``, ``__float__``, ``__bool__``, ``__int__``, ``tolist``, ``numpy``) are counted;
with the same log points, checkpoints and evaluations, twice the steps must give the same count,
and more log points must give more. On a GPU each such call waits for the device to drain its
queue; on the CPU it does not, but the count is the same, so the test runs here.

The loaders' own work is left out: a recipe without a whole-batch form still augments image by
image on the host (CPU tensors, no device sync; giving every recipe a batch form on the device is
the data-path half of the issue), and the test is about the step: forward, backward, optimizer,
logging, checkpoints."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from conftest import SMALL_SYNTHETIC, shipped_methods

from ltbench.config import resolve_config
from ltbench.data import InMemoryLoader, WorkerLoader
from ltbench.registry import load_plugins
from ltbench.runner import train

READS = ("item", "__float__", "__bool__", "__int__", "tolist", "numpy")

load_plugins()
REGISTERED = shipped_methods()
VARIANTS = {
    "plain": (),
    "sam": ("stages.*.optim.sam_rho=0.05",),
    "accum": ("stages.*.accum_steps=2",),
}


PAUSED = [0]  # > 0 while a loader makes a batch


def paused_while_loading(iterate):
    """A loader's ``__iter__`` whose batches are made with the counting paused."""

    def batches(self):
        inner = iterate(self)
        while True:
            PAUSED[0] += 1
            try:
                batch = next(inner, None)
            finally:
                PAUSED[0] -= 1
            if batch is None:
                return
            yield batch

    return batches


@pytest.fixture(autouse=True)
def _loaders_uncounted(monkeypatch):
    for cls in (InMemoryLoader, WorkerLoader):
        monkeypatch.setattr(cls, "__iter__", paused_while_loading(cls.__iter__))


@contextlib.contextmanager
def counting_reads():
    """Count every read-back call on ``torch.Tensor`` while the block runs."""
    counts = {name: 0 for name in READS}
    main = threading.current_thread()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name):
        original = originals[name]

        def call(self, *args, **kwargs):
            if threading.current_thread() is main and not PAUSED[0]:  # the training thread's, not a loader's
                counts[name] += 1
            return original(self, *args, **kwargs)

        return call

    for name in READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def reads_during_fit(tmp_path, method: str, sets: tuple[str, ...]) -> int:
    """Read-backs while the trainer of ``method`` fits (its teachers trained before, uncounted)."""
    cfg = resolve_config(method, "synthetic_lt", "smoke", [*SMALL_SYNTHETIC, "stages.*.epochs=1", *sets])
    total = []

    def hook(trainer) -> None:
        fit = trainer.fit

        def counted_fit():
            with counting_reads() as counts:
                record = fit()
            total.append(counts)
            return record

        trainer.fit = counted_fit

    train(cfg, tmp_path, progress=False, on_trainer=hook, force=True)  # one results root: a teacher trained once
    return sum(total[0].values())


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", REGISTERED)
def test_reads_grow_with_log_points_not_with_steps(tmp_path, method, variant):
    # 159 training images: batch 16 is 10 batches per epoch and stage, batch 32 is 5; no log row
    # and no timed checkpoint in either, so only the per-step reads could tell them apart
    if not resolve_config(method, "synthetic_lt", "smoke").stages:
        pytest.skip(f"{method} has no training stage (it only post-processes another run)")
    quiet = ("train.log_every=1000", "train.checkpoint_minutes=1000", *VARIANTS[variant])
    few = reads_during_fit(tmp_path, method, ("stages.*.batch_size=32", *quiet))
    many = reads_during_fit(tmp_path, method, ("stages.*.batch_size=16", *quiet))
    assert many == few, f"{method} ({variant}): {many - few} more read-backs for 5 more steps per stage"
    if variant == "plain":  # a row every step: the reads follow the log points
        logged = reads_during_fit(tmp_path, method, ("stages.*.batch_size=16", "train.log_every=1", *quiet[1:]))
        assert logged > many


def test_counting_sees_a_read_back_in_a_step():
    """The counter itself: one ``float()`` per step of a loop is five reads over five steps."""
    loss = torch.tensor(1.5)
    with counting_reads() as counts:
        for _ in range(5):
            float(loss * 2)
        bool(loss > 0)
        loss.tolist()
    assert counts["__float__"] == 5 and counts["__bool__"] == 1 and counts["tolist"] == 1
