"""Typed run configuration, its layered resolution, ``--set`` overrides and the run id.

A run's configuration is a tree of dataclasses. Resolution applies, in order: the dataclass
defaults, the method's defaults, the method's defaults for the dataset, the ``--preset`` recipe
(for that dataset, else its ``"*"`` entry), then ``--set a.b=value`` overrides. Every layer is
checked strictly: an unknown key is an error that names the valid keys, and values are converted
to the field's declared type. The resolved config is then validated once (:func:`validate`): a
field's valid range lives beside it, in its metadata (``limits``), and every value is checked
against it before anything is built or written. The run id hashes the *semantic* fields only (no
paths, devices, worker counts or logging knobs), so the same experiment always maps to the same run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownNameError

NONSEMANTIC = {"semantic": False}
SEED_MAX = 2**63 - 1  # seeds are packed as signed 64-bit integers (ltbench.data.derive_seed)
DATA_SEED_MAX = 2**32 - 1  # data seeds seed numpy's RandomState
# a (base) learning rate above this is a typo, not a recipe: the largest official ones (LARS-style
# linear scaling) stay below 10
LR_MAX = 100.0


#: a path to a file whose *content* matters (e.g. a teacher checkpoint): the path itself is not
#: semantic, its SHA-256 is (``Config.files``, filled when the config is resolved)
FILE = {"semantic": False, "file": True}


def _choices(*values: str, semantic: bool = True) -> dict:
    return {"choices": values, "semantic": semantic}


def limits(
    min: float | None = None, max: float | None = None, *, above: float | None = None, semantic: bool = True
) -> dict:
    """Field metadata: the valid range ``min <= value <= max`` (``above``: value > above), checked by
    :func:`validate`; for list fields every element is checked."""
    meta: dict = {"semantic": semantic}
    meta.update({k: v for k, v in (("min", min), ("max", max), ("above", above)) if v is not None})
    return meta


@dataclass
class OptimConfig:
    """Optimizer of one stage."""

    name: str = "sgd"  # a name in ltbench.optim.OPTIMIZERS
    lr: float = field(default=0.1, metadata=limits(0, LR_MAX))
    # > 0: `lr` is a base lr, scaled by effective batch / lr_ref_batch
    lr_ref_batch: int = field(default=0, metadata=limits(0))
    momentum: float = field(default=0.9, metadata=limits(0, 1))
    nesterov: bool = True
    weight_decay: float = field(default=5e-4, metadata=limits(0))
    no_decay_1d: bool = False  # no weight decay on biases and other 1-D parameters
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=limits(0, 1))
    eps: float = field(default=1e-8, metadata=limits(above=0))
    # < 1: layer-wise lr decay (the method supplies layer ids)
    layer_decay: float = field(default=1.0, metadata=limits(0, 1))
    # sharpness-aware minimisation (Foret et al. 2021): ascent radius rho; 0 = plain steps. From
    # each 0-based epoch in `sam_rho_milestones` on, rho becomes the matching `sam_rho_values` entry
    sam_rho: float = field(default=0.0, metadata=limits(0))
    sam_rho_milestones: list[int] = field(default_factory=list, metadata=limits(0))
    sam_rho_values: list[float] = field(default_factory=list, metadata=limits(0))


@dataclass
class ScheduleConfig:
    """Learning-rate schedule of one stage: a pure function of the optimizer step."""

    name: str = "cosine"  # a name in ltbench.optim.SCHEDULES
    per: str = field(default="step", metadata=_choices("step", "epoch", "batch"))
    warmup_epochs: float = field(default=0.0, metadata=limits(0))
    warmup_from: float = field(default=0.0, metadata=limits(0))  # lr factor at the first warmup step
    min_lr: float = field(default=0.0, metadata=limits(0))  # absolute floor of cosine-type schedules
    milestones: list[int] = field(default_factory=list, metadata=limits(0))  # epochs (0-based) of step decays
    gamma: float = field(default=0.1, metadata=limits(above=0))
    pct_start: float = field(default=0.3, metadata=limits(0, 1))  # one-cycle: fraction of steps spent rising
    div_factor: float = field(default=25.0, metadata=limits(above=0))  # one-cycle: initial lr = lr / div_factor
    # one-cycle: final lr = initial lr / final_div_factor
    final_div_factor: float = field(default=1e4, metadata=limits(above=0))


@dataclass
class StageConfig:
    """Epochs, batching, sampling, augmentation, optimizer and schedule of one training stage."""

    epochs: int = field(default=1, metadata=limits(0))
    batch_size: int = field(default=128, metadata=limits(1))  # global batch (split over DDP ranks)
    accum_steps: int = field(default=1, metadata=limits(1))
    sampler: str = "instance"  # a name in ltbench.data.SAMPLERS
    augment: list[str] = field(default_factory=lambda: ["default"])  # one recipe per view
    drop_last: bool = False
    grad_clip: float = field(default=0.0, metadata=limits(0))  # max gradient norm; 0 disables clipping
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class ModelConfig:
    """Backbone from the shared model registry; ViT fields are ignored by ResNets."""

    arch: str = "resnet32"
    embed_dim: int = field(default=128, metadata=limits(1))
    depth: int = field(default=4, metadata=limits(1))
    num_heads: int = field(default=4, metadata=limits(1))
    patch_size: int = field(default=4, metadata=limits(1))
    mlp_ratio: float = field(default=4.0, metadata=limits(above=0))
    drop_path: float = field(default=0.0, metadata=limits(0, 1))


@dataclass
class DataConfig:
    """Fields every dataset has; datasets subclass this with their own parameters."""

    root: str = field(default="", metadata=NONSEMANTIC)  # "" = the dataset's search path
    # data seed (subset and validation draw), independent of train.seed
    seed: int = field(default=0, metadata=limits(0, DATA_SEED_MAX))
    # DataLoader worker processes that decode image files; valid: -1 = one per CPU of the job less
    # one (Slurm's --cpus-per-task; at most 16; in-memory datasets stay in the main process),
    # 0 = decode in the main process, N >= 1 = N workers. Batches are the same for every value.
    workers: int = field(default=-1, metadata=limits(-1, semantic=False))
    # where image files are decoded: cpu = PIL in the workers; gpu = the workers read the bytes and
    # the training GPU decodes each batch (torchvision.io.decode_jpeg, nvJPEG; JPEG files and
    # tensor recipes only), then augments it image by image there. Not semantic, like train.device
    decode: str = field(default="cpu", metadata=NONSEMANTIC)
    # > 0: models and augmentation recipes work at this side length instead of the dataset's own
    # (the official ViT codes upsample CIFAR to 224); 0 = the dataset's size
    image_size: int = field(default=0, metadata=limits(0))


@dataclass
class TrainConfig:
    seed: int = field(default=0, metadata=limits(0, SEED_MAX))
    device: str = field(default="auto", metadata=NONSEMANTIC)  # auto | cpu | cuda | cuda:N
    # arithmetic of training: fp32, or autocast to fp16 (with a GradScaler) or bf16 (no scaler needed),
    # on the CPU too; auto = bf16 on a GPU that supports it, else fp16 on a GPU, fp32 on the CPU.
    # Classifier heads and loss arithmetic stay fp32 under autocast (ltbench.models.heads)
    precision: str = field(default="auto", metadata=_choices("auto", "fp32", "fp16", "bf16"))
    # BatchNorm statistics over all DDP processes (CUDA only); off: each process normalises its own batch
    sync_bn: bool = False
    deterministic: bool = field(default=True, metadata=NONSEMANTIC)
    # how long a DDP collective may wait for the other processes before the run fails (instead of hanging)
    dist_timeout_minutes: float = field(default=30.0, metadata=limits(above=0, semantic=False))
    checkpoint_minutes: float = field(default=10.0, metadata=limits(0, semantic=False))
    checkpoint_steps: int = field(default=0, metadata=limits(0, semantic=False))  # > 0: also every N steps
    # steps.csv (and TensorBoard): a row of loss, lr and loss terms every N optimizer steps; 0 = off
    log_every: int = field(default=20, metadata=limits(0, semantic=False))
    # seconds between progress lines (images, speed, loss, ETA of the whole run) when the output is
    # not a terminal: log.txt, Slurm output files; 0 = only the line at each epoch's end
    progress_every: float = field(default=60.0, metadata=limits(0, semantic=False))
    # torch.compile each module of Method.compile_modules() (the backbones): faster steps after a
    # compilation at the start of each stage; checkpoints keep their keys. Off by default
    compile: bool = field(default=False, metadata=NONSEMANTIC)
    # channels-last memory layout for convolutional models (more than one Conv2d: not a ViT, whose
    # only convolution is its patch embedding) and their batches; auto = on CUDA only
    channels_last: str = field(default="auto", metadata=_choices("auto", "on", "off", semantic=False))


@dataclass
class EvalConfig:
    every: int = field(default=1, metadata=limits(0))  # evaluate val every N epochs (0: only at the end of each stage)
    augment: str = "default"  # evaluation recipe for val and test; default = the dataset's own
    # arithmetic of evaluation: "train" = as train.precision, or fp32 | fp16 | bf16 (autocast)
    precision: str = field(default="train", metadata=_choices("train", "fp32", "fp16", "bf16"))
    selection: str = field(default="last", metadata=_choices("last", "best-val"))
    batch_size: int = field(default=256, metadata=limits(1, semantic=False))
    ece_bins: int = field(default=15, metadata=limits(1))
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
    #: SHA-256 of every FILE field that names a file, by dotted key (see :func:`hash_files`)
    files: dict[str, str] = field(default_factory=dict, metadata=NONSEMANTIC)

    SECTIONS: typing.ClassVar[tuple[str, ...]] = ("method", "model", "data", "stages", "train", "eval")

    @property
    def seed(self) -> int:
        return self.train.seed

    def to_dict(self) -> dict:
        return to_plain(self)

    def semantic_dict(self) -> dict:
        semantic = _semantic(self)
        if self.files:  # the content of referenced files, not their paths, identifies the run
            semantic["files"] = dict(self.files)
        return semantic

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


def file_fields(obj: Any, where: str = "") -> dict[str, str]:
    """Dotted key -> path of every non-empty FILE field in a dataclass tree."""
    found: dict[str, str] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            found.update(file_fields(value, f"{where}.{key}" if where else str(key)))
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            key = f"{where}.{f.name}" if where else f.name
            value = getattr(obj, f.name)
            if f.metadata.get("file"):
                if value:
                    found[key] = value
            elif f.name != "files":
                found.update(file_fields(value, key))
    return found


_HASHES: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's content (cached by path, size and modification time)."""
    p = Path(path).expanduser()
    try:
        stat = p.stat()
    except OSError:
        raise ConfigError(f"{path}: no such file; give the path of an existing file") from None
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def hash_files(cfg: Config) -> dict[str, str]:
    """``{"method.teacher_checkpoint": sha256, ...}`` for the files the config names."""
    return {key: file_sha256(path) for key, path in sorted(file_fields(cfg).items())}


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


def _range_text(meta: Mapping) -> str:
    parts = []
    if "above" in meta:
        parts.append(f"> {meta['above']:g}")
    if "min" in meta:
        parts.append(f">= {meta['min']:g}")
    if "max" in meta:
        parts.append(
            f"<= {meta['max']:g}" if meta["max"] < 1e6 else f"<= {meta['max']} (2**{meta['max'].bit_length()} - 1)"
        )
    return " and ".join(parts)


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _out_of_range(value: Any, meta: Mapping) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_out_of_range(v, meta) for v in value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if not math.isfinite(value):  # NaN and infinities are in no range
        return True
    return (
        ("min" in meta and value < meta["min"])
        or ("max" in meta and value > meta["max"])
        or ("above" in meta and value <= meta["above"])
    )


def validate(obj: Any, where: str = "") -> None:
    """Check every field of a config tree against the range in its metadata (:func:`limits`);
    raise ConfigError naming the key, its value and the valid range. A run must train something."""
    if isinstance(obj, Config) and obj.stages and not any(s.epochs for s in obj.stages.values()):
        raise ConfigError(
            f"every stage has 0 epochs ({', '.join(f'stages.{n}.epochs' for n in obj.stages)}): the run would "
            "record an untrained model; give at least one stage epochs >= 1"
        )
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            validate(value, f"{where}.{key}" if where else str(key))
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value) or isinstance(value, Mapping):
            validate(value, path)
        elif _out_of_range(value, f.metadata):
            finite = "" if all(map(_finite, value if isinstance(value, (list, tuple)) else [value])) else "finite and "
            raise ConfigError(f"{path}={value} is out of range: it must be {finite}{_range_text(f.metadata)}")
    if isinstance(obj, Config):
        check_names(obj)


def check_names(cfg: Config) -> None:
    """Every registered name the config uses exists (optimizer, schedule, sampler, backbone,
    augmentation recipes), and options given as parallel lists match: found when the config is
    resolved, not when a stage starts inside a run directory. Unknown names get "did you mean"."""
    from .augment import RECIPES
    from .data import SAMPLERS
    from .optim import OPTIMIZERS, SCHEDULES
    from .registry import MODELS

    def known(registry, name: str, key: str) -> None:
        try:
            registry.get(name)
        except UnknownNameError as err:
            raise UnknownNameError(f"{key}: {err}") from None

    known(MODELS, cfg.model.arch, "model.arch")
    if cfg.eval.augment != "default":
        known(RECIPES, cfg.eval.augment, "eval.augment")
    for name, stage in cfg.stages.items():
        where = f"stages.{name}"
        known(OPTIMIZERS, stage.optim.name, f"{where}.optim.name")
        known(SCHEDULES, stage.schedule.name, f"{where}.schedule.name")
        known(SAMPLERS, stage.sampler, f"{where}.sampler")
        for recipe in stage.augment:
            if recipe != "default":
                known(RECIPES, recipe, f"{where}.augment")
        if len(stage.optim.sam_rho_milestones) != len(stage.optim.sam_rho_values):
            raise ConfigError(
                f"{where}.optim.sam_rho_milestones={stage.optim.sam_rho_milestones} and {where}.optim.sam_rho_values="
                f"{stage.optim.sam_rho_values} must have the same length (one rho per milestone)"
            )


#: schedules whose lr rises over ``warmup_epochs`` before it reaches ``optim.lr``
WARMUP_SCHEDULES = ("cosine", "timm_cosine", "step")


def schedule_warnings(cfg: Config) -> list[str]:
    """What a stage's schedule never reaches within its epochs: the end of its warmup (the lr never
    gets to ``optim.lr``), step-decay milestones and SAM-rho milestones at or after the last epoch.
    Legal, but rarely meant (a recipe cut short with ``stages.*.epochs``): said in ``--dry-run`` and
    when the run starts, naming the keys."""
    found = []
    for name, stage in cfg.stages.items():
        if stage.epochs == 0:
            continue
        where, sched = f"stages.{name}", stage.schedule
        # step: epoch e < warmup runs at lr * (e + 1) / warmup, so the last warmup epoch is at lr
        short = sched.warmup_epochs > stage.epochs if sched.name == "step" else sched.warmup_epochs >= stage.epochs
        if sched.name in WARMUP_SCHEDULES and sched.warmup_epochs > 0 and short:
            found.append(
                f"{where}.schedule.warmup_epochs={sched.warmup_epochs:g} with {where}.epochs={stage.epochs}: the "
                f"warmup never ends, so the lr never reaches {where}.optim.lr={stage.optim.lr:g}"
            )
        late = [m for m in sched.milestones if m >= stage.epochs] if sched.name == "step" else []
        if late:
            found.append(
                f"{where}.schedule.milestones {late} are never reached in {where}.epochs={stage.epochs} (0-based "
                "epochs): the lr is never decayed there"
            )
        late = [m for m in stage.optim.sam_rho_milestones if m >= stage.epochs]
        if late:
            found.append(
                f"{where}.optim.sam_rho_milestones {late} are never reached in {where}.epochs={stage.epochs}: "
                "their sam_rho_values are never used"
            )
    return found


# keys an earlier ltbench wrote and what replaced them, so an old config.json fails with the way forward
RENAMED_KEYS = {
    "train.amp": "train.precision (fp32 | fp16 | bf16 | auto; train.amp=true trained fp16 on CUDA, fp32 on the CPU)",
}


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
                    if not obj:
                        raise ConfigError(f"unknown config key {path!r}: there are no keys under {where}")
                    raise ConfigError(
                        f"unknown config key {path!r}; valid keys under {where}: {', '.join(_valid_keys(obj))}"
                    )
                apply_overlay(obj[name], value, f"{where}.{name}")
            continue
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if key not in fields or (obj.__class__ is Config and key not in Config.SECTIONS):
            if path in RENAMED_KEYS:
                raise ConfigError(f"config key {path!r} was replaced by {RENAMED_KEYS[path]}: set that instead")
            valid = Config.SECTIONS if obj.__class__ is Config else _valid_keys(obj)
            scope = f"under {where}" if where else "at the top level"
            if not valid:
                raise ConfigError(f"unknown config key {path!r}: there are no keys under {where}")
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


def section_sets(cfg: Config, section: str) -> list[str]:
    """``--set`` assignments reproducing every field of one section of ``cfg`` (e.g. ``"data"``):
    how a method's ``requires`` puts its teacher on exactly the student's data. Non-semantic fields
    (``data.root``) come along: they locate the files without changing the run id."""

    def flatten(prefix: str, value: Any) -> list[str]:
        if isinstance(value, Mapping):
            return [a for k, v in value.items() for a in flatten(f"{prefix}.{k}", v)]
        text = json.dumps(value) if isinstance(value, (list, bool)) else str(value)
        return [f"{prefix}={text}"]

    return flatten(section, cfg.to_dict()[section])


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


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A config (or its plain dict) as ``{"stages.train.epochs": 200, ...}``."""
    obj = to_plain(obj)
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class Provenance:
    """Which layer of the resolution last changed each key (``ltbench run --dry-run``)."""

    def __init__(self, cfg: Config) -> None:
        self.before = self.baseline = flatten(cfg)
        self.source: dict[str, str] = {}

    def layer(self, cfg: Config, source: str, baseline: bool = False) -> None:
        now = flatten(cfg)
        self.source.update({k: source for k, v in now.items() if self.before.get(k) != v})
        self.before = now
        if baseline:
            self.baseline = now

    def changes(self, cfg: Config) -> list[tuple[str, Any, str]]:
        """``(key, value, layer)`` of every key whose value differs from the baseline."""
        return [(k, v, self.source.get(k, "?")) for k, v in flatten(cfg).items() if self.baseline.get(k) != v]


def resolve_config(
    method: str,
    dataset: str,
    preset: str | None = None,
    sets: list[str] | tuple[str, ...] = (),
    seed: int | None = None,
    provenance: list | None = None,
) -> Config:
    """Resolve method defaults -> method's dataset defaults -> preset -> ``--set`` overrides, then
    :func:`validate`. ``provenance``: filled with ``(key, value, layer)`` for each value that
    differs from the method's defaults."""
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
    trace = Provenance(cfg)
    layers: list[tuple[str, Mapping]] = [("method defaults", method_cls.defaults)]
    if preset:
        layers += _preset_layers(method_cls, dataset, preset)
    for source, layer in layers:
        try:
            apply_overlay(cfg, layer)
        except ConfigError as err:  # a bug in a shipped recipe: say which one
            raise ConfigError(f"{source} of {method}: {err}") from None
        trace.layer(cfg, source, baseline=source == "method defaults")
    apply_sets(cfg, sets, seed, trace)
    if provenance is not None:
        provenance[:] = trace.changes(cfg)
    return cfg


def apply_sets(
    cfg: Config, sets: list[str] | tuple[str, ...], seed: int | None, trace: Provenance | None = None
) -> None:
    """Apply ``--set`` overrides and ``--seed`` to a resolved config, then :func:`validate` it."""
    for assignment in sets:
        apply_overlay(cfg, parse_set(assignment))
        if trace is not None:
            trace.layer(cfg, f"--set {assignment}")
    if seed is not None:
        cfg.train.seed = seed
        if trace is not None:
            trace.layer(cfg, "--seed")
    cfg.files = hash_files(cfg)
    validate(cfg)


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
    # the hashes taken when the run was resolved; the runner checks the files still match them
    cfg.files = dict(data["files"]) if "files" in data else hash_files(cfg)
    validate(cfg)
    return cfg


def load_config_file(path: str | Path) -> Config:
    """A run's ``config.json`` (or a ``run.json``, whose ``config`` it holds) as a Config."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"--config {path} is not a readable JSON config ({err})") from None
    if isinstance(data, Mapping) and "config" in data and "method_name" not in data:
        data = data["config"]
    if not isinstance(data, Mapping) or not {"method_name", "dataset_name", "stages"} <= set(data):
        raise ConfigError(f"--config {path} is not an ltbench config.json (no method_name, dataset_name, stages)")
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"--config {path}: {err}") from None


def preset_changes(cfg: Config) -> dict[str, Any]:
    """The semantic settings of ``cfg`` that differ from its preset as resolved now, by dotted key
    (e.g. ``{"stages.mgp.epochs": 0}``; the seed excluded): what a report row calls its variant.
    Recorded in ``run.json`` so that reading it needs no method code."""
    preset = None if cfg.preset == "default" else cfg.preset
    reference = _flat(resolve_config(cfg.method_name, cfg.dataset_name, preset).semantic_dict())
    own = _flat(cfg.semantic_dict())
    own.pop("train.seed", None)
    return {k: v for k, v in sorted(own.items()) if reference.get(k, object()) != v}


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return {k: v for key, value in obj.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}
