"""Typed run configuration, its layered resolution, ``--set`` overrides and the run id.

A run's configuration is a tree of dataclasses. Resolution applies, in order: the dataclass
defaults, the method's defaults, the method's defaults for the dataset, the ``--preset`` recipe
(for that dataset, else its ``"*"`` entry), then ``--set a.b=value`` overrides. Every layer is
checked strictly: an unknown key is an error that names the valid keys, and values are converted
to the field's declared type. The run id hashes the *semantic* fields only (no paths, devices,
worker counts or logging knobs), so the same experiment always maps to the same run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

NONSEMANTIC = {"semantic": False}


def _choices(*values: str, semantic: bool = True) -> dict:
    return {"choices": values, "semantic": semantic}


@dataclass
class OptimConfig:
    """Optimizer of one stage."""

    name: str = "sgd"  # a name in ltbench.optim.OPTIMIZERS
    lr: float = 0.1
    lr_ref_batch: int = 0  # > 0: `lr` is a base lr, scaled by effective batch / lr_ref_batch
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    no_decay_1d: bool = False  # no weight decay on biases and other 1-D parameters
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 1.0  # < 1: layer-wise lr decay (the method supplies layer ids)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule of one stage: a pure function of the optimizer step."""

    name: str = "cosine"  # a name in ltbench.optim.SCHEDULES
    per: str = field(default="step", metadata=_choices("step", "epoch"))
    warmup_epochs: float = 0.0
    warmup_from: float = 0.0  # lr factor at the first warmup step
    min_lr: float = 0.0  # absolute floor of cosine-type schedules
    milestones: list[int] = field(default_factory=list)  # epochs (0-based) of step decays
    gamma: float = 0.1
    pct_start: float = 0.3  # one-cycle: fraction of steps spent rising
    div_factor: float = 25.0  # one-cycle: initial lr = lr / div_factor
    final_div_factor: float = 1e4  # one-cycle: final lr = initial lr / final_div_factor


@dataclass
class StageConfig:
    """Epochs, batching, sampling, augmentation, optimizer and schedule of one training stage."""

    epochs: int = 1
    batch_size: int = 128  # global batch (split over DDP ranks)
    accum_steps: int = 1
    sampler: str = "instance"  # a name in ltbench.data.SAMPLERS
    augment: list[str] = field(default_factory=lambda: ["default"])  # one recipe per view
    drop_last: bool = False
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class ModelConfig:
    """Backbone from the shared model registry; ViT fields are ignored by ResNets."""

    arch: str = "resnet32"
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path: float = 0.0


@dataclass
class DataConfig:
    """Fields every dataset has; datasets subclass this with their own parameters."""

    root: str = field(default="", metadata=NONSEMANTIC)  # "" = the dataset's search path
    seed: int = 0  # data seed (subset and validation draw), independent of train.seed
    # DataLoader worker processes that decode image files; valid: -1 = one per CPU of the job less
    # one (Slurm's --cpus-per-task; at most 16; in-memory datasets stay in the main process),
    # 0 = decode in the main process, N >= 1 = N workers. Batches are the same for every value.
    workers: int = field(default=-1, metadata=NONSEMANTIC)
    # > 0: models and augmentation recipes work at this side length instead of the dataset's own
    # (the official ViT codes upsample CIFAR to 224); 0 = the dataset's size
    image_size: int = 0


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = field(default="auto", metadata=NONSEMANTIC)  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA; no effect on the CPU
    deterministic: bool = field(default=True, metadata=NONSEMANTIC)
    checkpoint_minutes: float = field(default=10.0, metadata=NONSEMANTIC)
    checkpoint_steps: int = field(default=0, metadata=NONSEMANTIC)  # > 0: also every N steps


@dataclass
class EvalConfig:
    every: int = 1  # evaluate val every N epochs (0: only at the end of each stage)
    augment: str = "default"  # evaluation recipe for val and test; default = the dataset's own
    selection: str = field(default="last", metadata=_choices("last", "best-val"))
    batch_size: int = field(default=256, metadata=NONSEMANTIC)
    ece_bins: int = 15
    shot_rule: str = field(default="strict", metadata=NONSEMANTIC)  # for printed summaries


@dataclass
class Config:
    """A fully resolved run configuration."""

    method_name: str
    dataset_name: str
    method: Any  # the method's Params dataclass
    data: Any  # the dataset's Params dataclass (a DataConfig)
    stages: dict[str, StageConfig]
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    preset: str = field(default="default", metadata=NONSEMANTIC)

    SECTIONS: typing.ClassVar[tuple[str, ...]] = ("method", "model", "data", "stages", "train", "eval")

    @property
    def seed(self) -> int:
        return self.train.seed

    def to_dict(self) -> dict:
        return to_plain(self)

    def semantic_dict(self) -> dict:
        return _semantic(self)

    def run_id(self) -> str:
        """12 hex digits of the SHA-256 of the canonical JSON of the semantic config (seed included)."""
        return _digest(self.semantic_dict())

    def variant_id(self) -> str:
        """Like ``run_id`` but without the seed: runs of one variant differ only in their seed."""
        semantic = self.semantic_dict()
        semantic["train"].pop("seed")
        return _digest(semantic)


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- conversion


def to_plain(obj: Any) -> Any:
    """Dataclasses, dicts, tuples -> JSON-compatible Python values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _semantic(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _semantic(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.metadata.get("semantic", True)
        }
    if isinstance(obj, Mapping):
        return {str(k): _semantic(v) for k, v in obj.items()}
    return to_plain(obj)


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON/CLI value to the declared field type ``tp``; raise ConfigError if it cannot."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    try:
        if tp is Any:
            return value
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if origin in (list, tuple):
            if isinstance(value, str):
                text = value.strip()
                if text.startswith("["):
                    value = json.loads(text)
                else:
                    value = [v for v in (p.strip() for p in text.split(",")) if v != ""]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            if origin is tuple:
                if len(args) == 2 and args[1] is Ellipsis:
                    return tuple(convert(v, args[0], where) for v in value)
                if len(value) != len(args):
                    raise ValueError
                return tuple(convert(v, a, where) for v, a in zip(value, args))
            return [convert(v, args[0] if args else Any, where) for v in value]
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    else:
        if origin not in (list, tuple) and tp not in (bool, int, float, str, Any):
            raise ConfigError(f"{where}: unsupported field type {tp}")
    raise ConfigError(f"{where}: cannot use {value!r} as {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_choices(f: dataclasses.Field, value: Any, where: str) -> None:
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")


def _valid_keys(obj: Any) -> list[str]:
    if isinstance(obj, Mapping):
        return sorted(obj)
    return sorted(f.name for f in dataclasses.fields(obj))


def apply_overlay(obj: Any, overlay: Mapping[str, Any], where: str = "") -> None:
    """Apply a nested dict of overrides to a dataclass tree in place, strictly.

    In a dict-valued section (``stages``) the key ``"*"`` applies the value to every entry.
    """
    if not isinstance(overlay, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {overlay!r}")
    for key, value in overlay.items():
        path = f"{where}.{key}" if where else key
        if isinstance(obj, Mapping):
            targets = list(obj) if key == "*" else [key]
            for name in targets:
                if name not in obj:
                    raise ConfigError(
                        f"unknown config key {path!r}; valid keys under {where}: {', '.join(_valid_keys(obj))}"
                    )
                apply_overlay(obj[name], value, f"{where}.{name}")
            continue
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if key not in fields or (obj.__class__ is Config and key not in Config.SECTIONS):
            valid = Config.SECTIONS if obj.__class__ is Config else _valid_keys(obj)
            scope = f"under {where}" if where else "at the top level"
            raise ConfigError(f"unknown config key {path!r}; valid keys {scope}: {', '.join(valid)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) or isinstance(current, Mapping):
            apply_overlay(current, value, path)
            continue
        converted = convert(value, _type_hints(type(obj))[key], path)
        _check_choices(fields[key], converted, path)
        setattr(obj, key, converted)


def parse_set(assignment: str) -> dict:
    """``"a.b.c=value"`` -> ``{"a": {"b": {"c": "value"}}}`` (the value is converted later)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. stages.train.epochs=30), got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set: malformed key {key!r}")
    nested: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


# ----------------------------------------------------------------------------- resolution


def _preset_layers(method_cls: type, dataset: str, preset: str) -> list[tuple[str, Mapping]]:
    presets: Mapping[str, Mapping[str, Mapping]] = method_cls.presets
    if preset not in presets:
        valid = ", ".join(sorted(presets)) or "none"
        raise ConfigError(f"method {method_cls.registered_name!r} has no preset {preset!r}; its presets: {valid}")
    recipes = presets[preset]
    if dataset not in recipes and "*" not in recipes:
        raise ConfigError(
            f"preset {preset!r} of method {method_cls.registered_name!r} has no recipe for dataset "
            f"{dataset!r}; it covers: {', '.join(sorted(recipes))}"
        )
    layers = []
    if "*" in recipes:
        layers.append((f"preset {preset}", recipes["*"]))
    if dataset in recipes:
        layers.append((f"preset {preset} for {dataset}", recipes[dataset]))
    return layers


def resolve_config(
    method: str,
    dataset: str,
    preset: str | None = None,
    sets: list[str] | tuple[str, ...] = (),
    seed: int | None = None,
) -> Config:
    """Resolve method defaults -> method's dataset defaults -> preset -> ``--set`` overrides."""
    from .registry import DATASETS, METHODS, load_plugins

    load_plugins()
    method_cls = METHODS.get(method)
    dataset_cls = DATASETS.get(dataset)
    cfg = Config(
        method_name=method,
        dataset_name=dataset,
        method=method_cls.Params(),
        data=dataset_cls.Params(),
        stages={name: StageConfig() for name in method_cls.stage_names},
        preset=preset or "default",
    )
    layers: list[tuple[str, Mapping]] = [("method defaults", method_cls.defaults)]
    if dataset in method_cls.dataset_defaults:
        layers.append((f"method defaults for {dataset}", method_cls.dataset_defaults[dataset]))
    if preset:
        layers += _preset_layers(method_cls, dataset, preset)
    for source, layer in layers:
        try:
            apply_overlay(cfg, layer)
        except ConfigError as err:  # a bug in a shipped recipe: say which one
            raise ConfigError(f"{source} of {method}: {err}") from None
    for assignment in sets:
        apply_overlay(cfg, parse_set(assignment))
    if seed is not None:
        cfg.train.seed = seed
    return cfg


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config from ``config.json`` (``Config.to_dict()`` output)."""
    from .registry import DATASETS, METHODS, load_plugins

    load_plugins()
    method_cls = METHODS.get(data["method_name"])
    dataset_cls = DATASETS.get(data["dataset_name"])
    cfg = Config(
        method_name=data["method_name"],
        dataset_name=data["dataset_name"],
        method=method_cls.Params(),
        data=dataset_cls.Params(),
        stages={name: StageConfig() for name in data["stages"]},
        preset=data.get("preset", "default"),
    )
    apply_overlay(cfg, {k: data[k] for k in Config.SECTIONS if k in data})
    return cfg
