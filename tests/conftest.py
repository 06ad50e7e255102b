"""Shared fixtures: no downloads, a temporary results root, ../shared lookup, the CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _isolated_environ():
    """Every test gets back the environment it started with: code under test may export RANK,
    WORLD_SIZE, MASTER_PORT (submitit's rendezvous), which monkeypatch cannot undo when they were
    absent, and a later in-process job would then wait for seven ranks that never come."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    monkeypatch.setenv("LTBENCH_NO_DOWNLOAD", "1")


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "results"
    monkeypatch.setenv("LTBENCH_RESULTS", str(root))
    return root


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (reference data beside the checkout) is absent")
    return SHARED


@pytest.fixture
def cli(capsys):
    """Run ``ltbench ARGS`` in-process; returns (exit status, stdout, stderr)."""
    from ltbench.cli import main

    def run(*args: str):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def fmnist_available() -> bool:
    from ltbench.datasets.fmnist_lt import FILES, candidate_dirs

    return any(all((d / f).is_file() for f in FILES.values()) for d in candidate_dirs(""))


needs_fmnist = pytest.mark.skipif(
    not fmnist_available(),
    reason="Fashion-MNIST files not found (apt-get install dataset-fashion-mnist or set LTBENCH_DATA)",
)


def stop_at_step(n: int):
    """An ``on_trainer`` hook that requests a stop (as on preemption) at the n-th optimizer step,
    counted over the whole run; the trainer then checkpoints and raises TrainingInterrupted."""

    def hook(trainer) -> None:
        original, steps = trainer._maybe_checkpoint, [0]

        def count(step: int) -> None:
            steps[0] += 1
            if steps[0] == n:
                trainer.request_stop()
            original(step)

        trainer._maybe_checkpoint = count

    return hook


# synthetic_lt shrunk for whole-run tests of a method: 159 training images, 4 val and 6 test per class
SMALL_SYNTHETIC = ("data.img_max=40", "data.val_per_class=4", "data.test_per_class=6")


def shipped_methods() -> list[str]:
    """The methods ltbench ships (methods/), not the toy ones tests register (tests/toy_methods.py)."""
    from ltbench.registry import METHODS, load_plugins

    load_plugins()
    return sorted(n for n in METHODS.names() if METHODS.get(n).__module__.startswith("ltbench.methods"))


def final_results(record: dict) -> dict:
    """The parts of a run record that a resumed run must reproduce exactly."""
    return {"splits": record["splits"], "selection": record["selection"]}


def resolve_registered(method: str, dataset: str, preset: str):
    """``resolve_config`` for a preset, skipping the test when this checkout lacks the dataset;
    asserts that every augmentation the preset names is a known recipe."""
    from ltbench.augment import RECIPES
    from ltbench.config import resolve_config
    from ltbench.registry import DATASETS, load_plugins

    load_plugins()
    if dataset not in DATASETS:
        pytest.skip(f"dataset {dataset} is not registered in this checkout")
    cfg = resolve_config(method, dataset, preset)
    assert all(name in RECIPES for stage in cfg.stages.values() for name in stage.augment)
    return cfg


def long_tailed_info(num_classes: int, image_size: int, decay: float = 0.996):
    """The ``DataInfo`` of a paper-scale dataset without its images: RGB, an exponential training
    profile from 1,280 images (ImageNet-LT's head) down to at least one per class."""
    import numpy as np

    from ltbench.method import DataInfo

    counts = np.maximum(1, (1280 * decay ** np.arange(num_classes)).astype(int))
    return DataInfo(num_classes=num_classes, in_chans=3, image_size=image_size, train_counts=counts)


def take_step(method, stage: str, batch, epoch: int, epochs: int):
    """One training step of ``stage`` as the trainer takes it (enter the stage, set its train mode,
    compute the loss at 1-based ``epoch`` of ``epochs``, backpropagate); asserts a finite loss."""
    import math

    from ltbench.method import StepContext

    method.enter_stage(stage)
    method.set_train_mode(stage)
    loss = method.train_step(batch, StepContext(stage, epoch, epochs, 0, 1))["loss"]
    loss.backward()
    assert math.isfinite(loss.item())
    return loss
