"""Config resolution order, strictness, typed --set parsing and run ids."""

from __future__ import annotations

import json
import random

import pytest

from ltbench.config import apply_overlay, config_from_dict, parse_set, resolve_config
from ltbench.errors import ConfigError, UnknownNameError


def test_resolution_order_defaults_preset_then_set():
    default = resolve_config("ce", "fmnist_lt")
    assert default.stages["train"].epochs == 200  # method defaults (LDAM-DRW CE recipe)
    assert default.stages["train"].optim.nesterov is False
    cpu = resolve_config("ce", "fmnist_lt", "cpu")
    assert cpu.stages["train"].epochs == 30  # preset over defaults
    assert cpu.stages["train"].schedule.name == "onecycle"
    assert cpu.stages["train"].optim.nesterov is True
    over = resolve_config("ce", "fmnist_lt", "cpu", ["stages.train.epochs=3", "stages.train.optim.lr=2e-2"])
    assert over.stages["train"].epochs == 3 and over.stages["train"].optim.lr == pytest.approx(0.02)
    assert over.stages["train"].schedule.name == "onecycle"  # untouched keys keep the preset's value
    assert over.preset == "cpu"


def test_set_converts_to_field_types():
    cfg = resolve_config(
        "ce",
        "synthetic_lt",
        None,
        [
            "stages.train.optim.nesterov=false",
            "stages.train.schedule.milestones=10,20",
            "stages.train.optim.betas=0.9,0.95",
            "stages.train.augment=normalize,pad_crop_flip",
            "data.imb_factor=50",
            "eval.selection=best-val",
            "train.seed=3",
        ],
    )
    s = cfg.stages["train"]
    assert s.optim.nesterov is False
    assert s.schedule.milestones == [10, 20]
    assert s.optim.betas == (0.9, 0.95)
    assert s.augment == ["normalize", "pad_crop_flip"]
    assert cfg.data.imb_factor == 50.0 and isinstance(cfg.data.imb_factor, float)
    assert cfg.eval.selection == "best-val" and cfg.train.seed == 3


def test_stage_wildcard_sets_every_stage():
    cfg = resolve_config("ce", "synthetic_lt", None, ["stages.*.epochs=4"])
    assert all(s.epochs == 4 for s in cfg.stages.values())


@pytest.mark.parametrize(
    "assignment, fragment",
    [
        ("stages.train.epoch=3", "valid keys under stages.train: accum_steps, augment, batch_size"),
        ("stages.warmup.epochs=3", "valid keys under stages: train"),
        ("optim.lr=0.1", "valid keys at the top level: method, model, data, stages, train, eval"),
        ("data.imb=10", "imb_factor"),
        ("method_name=ride", "valid keys at the top level"),
    ],
)
def test_unknown_keys_name_the_valid_ones(assignment, fragment):
    with pytest.raises(ConfigError) as err:
        resolve_config("ce", "synthetic_lt", None, [assignment])
    assert "unknown config key" in str(err.value) and fragment in str(err.value)


@pytest.mark.parametrize(
    "assignment",
    [
        "stages.train.epochs=three",
        "stages.train.epochs=1.5",
        "train.precision=fp8",
        "eval.selection=best-test",
        "stages.train.optim.betas=0.9",
    ],
)
def test_bad_values_are_errors(assignment):
    with pytest.raises(ConfigError):
        resolve_config("ce", "synthetic_lt", None, [assignment])


def test_malformed_set():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set("stages.train.epochs")


def test_unknown_names_and_presets():
    with pytest.raises(UnknownNameError, match="Valid methods: .*ce"):
        resolve_config("nope", "fmnist_lt")
    with pytest.raises(UnknownNameError, match="Valid datasets: .*fmnist_lt.*synthetic_lt"):
        resolve_config("ce", "fmnist")
    with pytest.raises(
        ConfigError,
        match="no preset 'fast'; its presets: cpu, cpu_ride, cpu_vit, full, full_bal_softmax, full_deit_lt, "
        "full_livt, full_mdcs, full_paco, full_ride, full_shike, paper, smoke",
    ):
        resolve_config("ce", "fmnist_lt", "fast")
    with pytest.raises(ConfigError, match="no recipe for dataset 'synthetic_lt'; it covers: cifar100_lt, cifar10_lt"):
        resolve_config("ce", "synthetic_lt", "paper")


def test_run_id_stable_under_key_order_and_round_trip():
    cfg = resolve_config("ce", "fmnist_lt", "cpu", ["stages.train.epochs=7"], seed=2)
    plain = cfg.to_dict()

    def shuffled(obj):
        if isinstance(obj, dict):
            items = list(obj.items())
            random.Random(0).shuffle(items)
            return {k: shuffled(v) for k, v in items}
        return obj

    again = config_from_dict(json.loads(json.dumps(shuffled(plain))))
    assert again.to_dict() == plain
    assert again.run_id() == cfg.run_id()
    assert len(cfg.run_id()) == 12


def test_run_id_changes_with_semantics_only():
    base = resolve_config("ce", "fmnist_lt", "cpu")
    changed = [
        resolve_config("ce", "fmnist_lt", "cpu", [s])
        for s in (
            "stages.train.optim.lr=0.05",
            "data.imb_factor=50",
            "data.seed=1",
            "model.arch=vit",
            "eval.selection=best-val",
        )
    ]
    assert len({base.run_id(), *(c.run_id() for c in changed)}) == 1 + len(changed)
    assert resolve_config("ce", "fmnist_lt", "cpu", seed=1).run_id() != base.run_id()
    same = resolve_config(
        "ce",
        "fmnist_lt",
        "cpu",
        [
            "data.root=/elsewhere",
            "train.device=cpu",
            "data.workers=4",
            "train.checkpoint_minutes=1",
            "eval.batch_size=64",
        ],
    )
    assert same.run_id() == base.run_id()


def test_variant_ignores_the_seed_only():
    a = resolve_config("ce", "fmnist_lt", "cpu", seed=0)
    b = resolve_config("ce", "fmnist_lt", "cpu", seed=1)
    c = resolve_config("ce", "fmnist_lt", "cpu", ["stages.train.epochs=5"], seed=0)
    assert a.variant_id() == b.variant_id() != c.variant_id()
    assert a.run_id() != b.run_id()


def test_a_renamed_key_names_its_replacement():
    # a config.json of an ltbench before train.precision: the error says what to set instead
    with pytest.raises(ConfigError, match=r"'train.amp' was replaced by train.precision \(fp32 \| fp16"):
        apply_overlay(resolve_config("ce", "synthetic_lt", "smoke"), {"train": {"amp": True}})
