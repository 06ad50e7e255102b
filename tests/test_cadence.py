"""What the trainer does besides the steps, and how often: checkpoints by time and at stage ends
(not every epoch), validation every ``eval.every`` epochs (the final epoch always), one forward
per evaluation batch for multi-head methods, persistent evaluation workers, ``train.compile``
and the channels-last layout of convolutional models."""

from __future__ import annotations

import shutil

import pytest
import torch
import toy_methods  # noqa: F401  (registers toy2, toy_linear)
from conftest import SMALL_SYNTHETIC, stop_at_step

from ltbench.config import resolve_config
from ltbench.runner import build_data, build_method, train
from ltbench.trainer import Trainer, TrainingInterrupted, in_channels_last, is_convolutional


def saves_during(tmp_path, method: str, sets: list[str]) -> tuple[list[dict], object]:
    """The positions at which the run wrote its checkpoint, and the run."""
    positions = []

    def hook(trainer) -> None:
        save = trainer._save

        def counted() -> None:
            save()
            positions.append(dict(vars(trainer.state.position)))

        trainer._save = counted

    res = train(resolve_config(method, "synthetic_lt", None, sets), tmp_path, progress=False, on_trainer=hook)
    return positions, res


def test_checkpoints_at_stage_ends_not_every_epoch(tmp_path):
    # toy2: two stages of 3 epochs (13 steps each); no timed checkpoint within ten minutes
    positions, res = saves_during(tmp_path / "a", "toy2", ["stages.*.epochs=3", "train.checkpoint_minutes=10"])
    assert positions == [{"stage": 0, "epoch": 3, "batch": 0}, {"stage": 1, "epoch": 3, "batch": 0}]
    assert res.run.checkpoint.exists()
    # checkpoint_minutes=0: at every optimizer step (and the stage ends)
    positions, _ = saves_during(tmp_path / "b", "toy2", ["stages.*.epochs=1", "train.checkpoint_minutes=0"])
    assert [p["batch"] for p in positions if p["stage"] == 0] == [*range(1, 14), 0]


@pytest.mark.parametrize("stop_after", [20, 33], ids=lambda n: f"step{n}")
def test_resume_without_per_epoch_checkpoints_equals_an_uninterrupted_run(tmp_path, stop_after):
    """With checkpoints only at stage ends and on the stop request, a run stopped in its second
    epoch (step 20) or in the second stage (step 33) resumes to the uninterrupted results, the
    validation lines of every epoch included."""
    sets = ["stages.*.epochs=2", "train.checkpoint_minutes=10"]
    cfg = resolve_config("toy2", "synthetic_lt", None, sets)
    reference = train(cfg, tmp_path / "reference", progress=False)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "stopped", progress=False, on_trainer=stop_at_step(stop_after))
    resumed = train(cfg, tmp_path / "stopped", progress=False)
    assert resumed.record["resumes"] == 1
    assert resumed.record["splits"] == reference.record["splits"]
    assert resumed.run.read_metrics() == reference.run.read_metrics()


def _val_epochs(res) -> list[tuple[str, int]]:
    return [(e["stage"], e["epoch"]) for e in res.run.read_metrics() if e["split"] == "val" and not e.get("final")]


def test_eval_every_n_epochs_and_always_the_last(tmp_path):
    cfg = resolve_config("toy2", "synthetic_lt", None, ["stages.*.epochs=5", "eval.every=2"])
    res = train(cfg, tmp_path / "two", progress=False)
    assert _val_epochs(res) == [("train", 2), ("train", 4), ("train", 5), ("head", 2), ("head", 4), ("head", 5)]
    cfg = resolve_config("toy2", "synthetic_lt", None, ["stages.*.epochs=3", "eval.every=0"])
    assert _val_epochs(train(cfg, tmp_path / "zero", progress=False)) == [("train", 3), ("head", 3)]


def test_best_val_chooses_among_the_evaluated_epochs(tmp_path):
    sets = ["stages.*.epochs=5", "eval.every=2", "eval.selection=best-val"]
    res = train(resolve_config("toy2", "synthetic_lt", None, sets), tmp_path, progress=False)
    evals = [e for e in res.run.read_metrics() if e["split"] == "val" and not e.get("final") and e["stage"] == "head"]
    assert [e["epoch"] for e in evals] == [2, 4, 5]
    best = max(evals, key=lambda e: e["overall"])  # the first maximum wins
    assert res.record["selection"]["epoch"] == best["epoch"]
    assert res.record["splits"]["val"]["heads"]["main"] == best["heads"]["main"]


@pytest.mark.parametrize("method", ["ride", "mdcs", "shike", "deit_lt"])
def test_one_forward_per_evaluation_batch(tmp_path, method, results):
    """The multi-head methods give ``predict`` and ``predict_heads`` from one network pass, with
    the same values as the two calls."""
    from ltbench.runner import load_teachers, resolve_device

    cfg = resolve_config(method, "synthetic_lt", "smoke", [*SMALL_SYNTHETIC, "stages.*.epochs=1"])
    data = build_data(cfg)
    teachers = load_teachers(cfg, data, resolve_device("cpu"), results, progress=False)
    torch.manual_seed(0)
    m = build_method(cfg, data, teachers.modules).eval()
    # RIDE's routed prediction (after its router stage) runs only the experts each sample reaches,
    # what its counters measure: its heads then take a full pass besides; before it, one pass
    for stage in cfg.stages if method != "ride" else ["train"]:
        m.enter_stage(stage)
    x = torch.randn(4, data.in_chans, data.image_size, data.image_size)
    stem = next(mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d))  # first layer (patch embedding)
    calls = []
    handle = stem.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        main, heads = m.predict_all(x)
    handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        assert torch.equal(main, m.predict(x))
        separate = m.predict_heads(x)
    assert separate.keys() == heads.keys() and all(torch.equal(heads[k], separate[k]) for k in heads)


def test_evaluation_workers_persist_across_evaluations(tmp_path):
    """An evaluation recipe without a whole-batch form goes through DataLoader workers: one
    loader, and its worker pool, serves every evaluation of the run."""
    cfg = resolve_config("toy2", "synthetic_lt", None, ["eval.augment=autoaug_cutout", "data.workers=1"])
    loaders = []

    def hook(trainer) -> None:
        batches = trainer._eval_batches

        def remember(split):
            loader = batches(split)
            loaders.append((split, loader))
            return loader

        trainer._eval_batches = remember

    train(cfg, tmp_path, progress=False, on_trainer=hook)
    val = [loader for split, loader in loaders if split == "val"]
    assert len(val) >= 3 and all(loader is val[0] for loader in val)
    assert val[0].loader.persistent_workers and val[0].loader.num_workers == 1


def _state_keys(res) -> list[str]:
    return sorted(torch.load(res.run.checkpoint, weights_only=False)["model"])


def test_compile_trains_the_same_model_with_the_same_checkpoint_keys(tmp_path):
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile (inductor) needs a C compiler on the CPU; none on PATH")
    import torch._dynamo

    torch._dynamo.reset()
    plain = train(resolve_config("toy_linear", "synthetic_lt"), tmp_path / "plain", progress=False)
    compiled_modules = []

    def hook(trainer) -> None:
        compiled_modules.append(trainer)

    cfg = resolve_config("toy_linear", "synthetic_lt", None, ["train.compile=true"])
    assert cfg.run_id() == resolve_config("toy_linear", "synthetic_lt").run_id()  # a speed knob only
    compiled = train(cfg, tmp_path / "compiled", progress=False, on_trainer=hook)
    trainer = compiled_modules[0]
    assert trainer._compiled and trainer.method.fc._compiled_call_impl is not None
    assert _state_keys(compiled) == _state_keys(plain) == ["fc.bias", "fc.weight"]
    a = torch.load(plain.run.checkpoint, weights_only=False)["model"]
    b = torch.load(compiled.run.checkpoint, weights_only=False)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_channels_last_for_convolutional_models_and_their_batches(tmp_path):
    resnet = resolve_config("ce", "synthetic_lt", "smoke", [*SMALL_SYNTHETIC, "train.channels_last=on"])
    vit = resolve_config("livt", "synthetic_lt", "smoke", [*SMALL_SYNTHETIC, "train.channels_last=on"])
    data = build_data(resnet)
    assert is_convolutional(build_method(resnet, data)) and not is_convolutional(build_method(vit, build_data(vit)))
    seen = []

    def hook(trainer) -> None:
        step = trainer.method.train_step

        def record(batch, ctx):
            seen.append((batch.x.stride(), batch.x.shape))
            return step(batch, ctx)

        trainer.method.train_step = record

    res = train(resnet, tmp_path / "on", progress=False, on_trainer=hook)
    b, c, h, w = seen[0][1]
    assert all(stride == (c * h * w, 1, w * c, c) for stride, _ in seen)
    conv = next(m for m in build_method(resnet, data).modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # a fresh model is NCHW ...
    state = torch.load(res.run.checkpoint, weights_only=False)["model"]
    weight = next(v for k, v in state.items() if v.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)  # ... the trained one channels-last
    # a batch in NCHW strides is converted; one already channels-last is kept as it is
    x = torch.randn(2, 3, 4, 4)
    from ltbench.data import Batch

    converted = in_channels_last(Batch([x], torch.zeros(2), torch.zeros(2))).x
    assert converted.stride() == (48, 1, 12, 3) and torch.equal(converted, x)
    assert in_channels_last(Batch([converted], torch.zeros(2), torch.zeros(2))).x is converted


def test_channels_last_auto_is_off_on_the_cpu(tmp_path):
    cfg = resolve_config("ce", "synthetic_lt", "smoke", [*SMALL_SYNTHETIC])
    assert cfg.train.channels_last == "auto"
    data = build_data(cfg)
    from ltbench.records import RunDir

    trainer = Trainer(cfg, data, build_method(cfg, data), RunDir(tmp_path / "run"), torch.device("cpu"))
    trainer._prepare_modules()
    assert not trainer.channels_last
