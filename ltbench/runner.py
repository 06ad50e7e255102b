"""Run one configuration to completion in its run directory: the entry point shared by the CLI,
the local launcher and Slurm jobs.

The run directory is derived from the run id, so the same command always finds the same run:
a finished run is reported and left alone, an unfinished one resumes from its checkpoint. A run
directory is bound to the data it trains on (``data.json``, the dataset fingerprint): when the data
has changed since (a fixed split file, another ``--root``), the old results are never returned as
this data's: the run is refused, or with ``force`` set aside and trained again.

Runs that need runs: before a run seeds and builds its method, :func:`load_teachers` resolves
every run its method ``requires``: a finished one is loaded, a missing one is trained first in
the same results root (or waited for, when another process holds its lock), each as an ordinary
run of its own. ``method.<name>_checkpoint=PATH`` replaces the run named ``<name>`` by the weights
in PATH (whose SHA-256 is part of the run id, see :data:`ltbench.config.FILE`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config, file_sha256, schedule_warnings
from .data import LTData
from .distributed import DistInfo
from .errors import ConfigError, LTBenchError, user_message
from .method import DataInfo, Method
from .precision import set_tf32
from .preflight import ImageWatch, check_files, preflight
from .records import RunDir, RunLockedError, atomic_write_json, results_root
from .registry import DATASETS, METHODS, load_plugins
from .trainer import Trainer, TrainingInterrupted, seed_everything

log = logging.getLogger("ltbench")


@dataclass
class RunResult:
    run: RunDir
    record: dict
    already_done: bool


def run_dir_for(cfg: Config, results: str | Path | None = None) -> RunDir:
    return RunDir.of(results_root(results), cfg.dataset_name, cfg.method_name, cfg.run_id())


def resolve_device(name: str, dist: DistInfo = DistInfo()) -> torch.device:
    """The device of this process. On CUDA each process takes GPU ``local_rank % visible GPUs``:
    one GPU per process where every process sees the node's GPUs, and its own device 0 where
    Slurm binds one GPU per task (``--gpus-per-task``). ``cuda:N`` names one GPU, for one process."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu")
        count = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", dist.local_rank % count)
        elif dist.enabled:
            raise ConfigError(
                f"train.device={name} would put all {dist.world_size} processes of this run on one GPU; "
                "use train.device=cuda (each process takes GPU LOCAL_RANK % visible GPUs) and choose the "
                "GPUs with CUDA_VISIBLE_DEVICES"
            )
        elif device.index >= count:
            raise ConfigError(f"train.device={name}: this machine shows {count} GPU(s), cuda:0 to cuda:{count - 1}")
        torch.cuda.set_device(device)
    return device


def build_data(cfg: Config) -> LTData:
    load_plugins()
    dataset = DATASETS.get(cfg.dataset_name)
    data = dataset().build(cfg.data)
    data.shot_rule = dataset.shot_rule
    if cfg.data.image_size > 0:  # a preset's working resolution (e.g. CIFAR at 224 for a ViT)
        data.image_size = cfg.data.image_size
    return data


def build_method(cfg: Config, data: LTData, teachers: Mapping[str, Method] | None = None) -> Method:
    load_plugins()
    method_cls = METHODS.get(cfg.method_name)
    if teachers:
        return method_cls(cfg, DataInfo.of(data), teachers)
    return method_cls(cfg, DataInfo.of(data))


# ----------------------------------------------------------------------------- runs that need runs


@dataclass
class Teachers:
    """The frozen teacher networks of a run (by name) and what its run.json records about them."""

    modules: dict[str, Method] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)  # logged again into the student's log


def _accuracy(record: dict, shot_rule: str) -> dict:
    from .metrics import summarize

    main = record["splits"]["test"]["heads"]["main"]
    acc = summarize(main["correct"], main["total"], record["train_counts"], shot_rule)
    return {k: acc[k] for k in ("overall", "balanced", "many", "medium", "few")}


def _freeze(method: Method, device: torch.device) -> Method:
    """Eval mode and no gradients, on ``device``; the caller loads the final weights first."""
    method.to(device).eval()
    method.requires_grad_(False)
    return method


def load_teachers(
    cfg: Config,
    data: LTData,
    device: torch.device,
    results: str | Path | None = None,
    dist: DistInfo = DistInfo(),
    progress: bool = False,
    waiting_epochs: int = 0,
) -> Teachers:
    """Every run ``cfg``'s method requires, finished (trained now if needed) and frozen on ``device``.
    ``waiting_epochs``: epochs of runs waiting for ``cfg``'s, for the ETA of a teacher trained here."""

    load_plugins()
    out = Teachers()
    for name, tcfg in METHODS.get(cfg.method_name).requires(cfg).items():
        tdata = build_data(tcfg)
        if tdata.fingerprint != data.fingerprint:
            raise ConfigError(
                f"teacher {name!r} ({tcfg.method_name} on {tcfg.dataset_name}) would train on data with "
                f"fingerprint {tdata.fingerprint or '(unknown)'}, this run on {data.fingerprint or '(unknown)'}: "
                "a teacher must see exactly the student's training data (same dataset and data.* settings)"
            )
        checkpoint = getattr(cfg.method, f"{name}_checkpoint", "")
        if checkpoint:
            out.modules[name], out.records[name] = _teacher_from_file(cfg, name, tcfg, tdata, checkpoint, device)
            out.messages.append(f"its {name}: the weights in {checkpoint} ({tcfg.method_name} model)")
            continue
        teacher_run = run_dir_for(tcfg, results)
        if not teacher_run.is_done():
            log.info(
                "training its %s run %s (%s) first, in %s", name, tcfg.run_id(), tcfg.method_name, teacher_run.path
            )
        waiting = waiting_epochs + sum(stage.epochs for stage in cfg.stages.values())  # the student's, in its ETA
        result = ensure_trained(tcfg, results, dist=dist, progress=progress, waiting_epochs=waiting)
        record = result.record
        if record["dataset_fingerprint"] != data.fingerprint:
            raise ConfigError(
                f"teacher {name!r} run {teacher_run.path} was trained on data with fingerprint "
                f"{record['dataset_fingerprint']}, this run's data has {data.fingerprint}"
            )
        teacher = _entered(build_method(tcfg, tdata, load_teachers(tcfg, tdata, device, results, dist).modules))
        teacher.load_state_dict(final_weights(teacher_run, map_location=device))
        out.modules[name] = _freeze(teacher, device)
        out.records[name] = {
            "run_id": record["run_id"],
            "method": record["method"],
            "preset": record["preset"],
            "run_dir": str(teacher_run.path),
            "test": _accuracy(record, cfg.eval.shot_rule),
        }
        verb = "reusing the finished" if result.already_done else "trained"
        out.messages.append(f"its {name}: {verb} run {record['run_id']} ({teacher_run.path})")
    return out


def _entered(method: Method) -> Method:
    """A freshly built method taken through every stage, so it holds what a finished run saved
    (heads or routers built when a stage starts)."""
    for stage in method.cfg.stages:
        method.enter_stage(stage)
    return method


def _teacher_from_file(
    cfg: Config, name: str, tcfg: Config, tdata: LTData, path: str, device: torch.device
) -> tuple[Method, dict]:
    key = f"method.{name}_checkpoint"
    sha = file_sha256(path)
    if cfg.files.get(key, sha) != sha:
        raise LTBenchError(
            f"{path} changed since this run was configured (sha256 {cfg.files[key][:12]}... then, {sha[:12]}... "
            "now): the run id names the old content; restore that file or start a new run"
        )
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # pickle, zip or torch errors: the file is no checkpoint
        raise ConfigError(
            f"{key}={path} is not a PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0]}); "
            f"give an ltbench checkpoint.pt / best.pt of a {tcfg.method_name} run, or leave {key} empty to use "
            "the teacher run"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # an ltbench checkpoint.pt
    teacher = _entered(build_method(tcfg, tdata))
    try:
        teacher.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"{key}={path}: not the weights of a {tcfg.method_name} model as configured for this "
            f"teacher ({str(err).splitlines()[0]}); give an ltbench checkpoint.pt / best.pt of such a run"
        ) from None
    record = {"checkpoint": str(Path(path).resolve()), "sha256": sha, "method": tcfg.method_name}
    return _freeze(teacher, device), record


class _LogFile(logging.FileHandler):
    """A run's log.txt. A line that cannot be written (a full disk) is lost quietly: the error
    that ends the run is shown once, not behind logging's traceback of the failed write."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextlib.contextmanager
def _log_to(path: Path, enabled: bool) -> Iterator[None]:
    """Copy the log to ``path``; an error that ends the run is written there too (only there: the
    CLI prints it), so that ``ltbench status`` can say why the run stopped."""
    if not enabled:
        yield
        return
    handler = _LogFile(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    except Exception as err:
        if not isinstance(err, TrainingInterrupted):  # a stop request is no failure
            text = " | ".join(user_message(err).splitlines())
            handler.handle(
                log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s: %s", (type(err).__name__, text), None)
            )
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


class StaleRunError(LTBenchError):
    """The run directory holds a run of this config trained on other data."""


def _data_identity(data: LTData) -> dict:
    """What ``data.json`` binds a run to: the fingerprint (split lists and labels) and the digest of
    the images' content (:func:`ltbench.preflight.check_files`); the root only to say where it was."""
    return {
        "fingerprint": data.fingerprint,
        "content": data.details.get("content", ""),
        "root": data.details.get("root", ""),
    }


def _stored_identity(stored: dict) -> dict:
    """The identity a run.json or data.json records (older records have no content digest)."""
    details = stored.get("dataset_details") or stored
    return {
        "fingerprint": stored.get("dataset_fingerprint") or stored.get("fingerprint"),
        "content": details.get("content") or "",
        "root": details.get("root") or "",
    }


def check_data(run: RunDir, data: LTData) -> None:
    """Refuse a run directory whose run (finished, or with a checkpoint) was trained on other data:
    other split lists or labels (the fingerprint), or other image content (the content digest, where
    the run recorded one). The root is not compared: a copy of the same data elsewhere matches."""
    if not run.is_done() and not run.checkpoint.exists():
        return  # nothing trained yet: the run starts on this data
    stored = run.read_record() if run.is_done() else run.read_data()
    if stored is None:
        return
    old, new = _stored_identity(stored), _data_identity(data)
    same_lists = old["fingerprint"] == new["fingerprint"]
    if same_lists and (not old["content"] or old["content"] == new["content"]):
        return
    what = "dataset fingerprint" if not same_lists else "image content"
    key = "fingerprint" if not same_lists else "content"
    raise StaleRunError(
        f"{run.path} holds this configuration trained on other data: {what} {old[key]}"
        + (f" (root {old['root']})" if old["root"] else "")
        + f", but the data now has {key} {new[key]}"
        + (f" (root {new['root']})" if new["root"] else "")
        + ". Its results (and its checkpoint) are not this data's. To train on this data, pass --force (the old "
        "run is moved to superseded/ in that directory, nothing is deleted) or --out DIR for another results directory"
    )


def _write_config(run: RunDir, cfg: Config, data: LTData) -> None:
    if not run.config.exists():  # the directory name is the run id: an existing file is this config
        atomic_write_json(run.config, cfg.to_dict())
    if run.read_data() != _data_identity(data):  # new, nothing trained yet, or the same data elsewhere
        atomic_write_json(run.data, _data_identity(data))


def train(
    cfg: Config,
    results: str | Path | None = None,
    progress: bool = True,
    dist: DistInfo = DistInfo(),
    on_trainer: Callable[[Trainer], None] | None = None,
    force: bool = False,
    waiting_epochs: int = 0,
) -> RunResult:
    """Train ``cfg`` (or resume it, or report it finished). ``on_trainer`` sees the trainer before
    training starts (the Slurm job uses it to route preemption signals to ``request_stop``).
    ``force``: set aside what the run directory holds (finished or not) and train from the start.
    ``waiting_epochs``: epochs of a run that waits for this one (its student), counted in the ETA."""
    run = run_dir_for(cfg, results)
    device = resolve_device(cfg.train.device, dist)
    data = build_data(cfg)  # before the run directory exists: bad data leaves nothing behind
    data.details["content"] = check_files(data, cfg.dataset_name)  # every listed file exists; their content
    if not force:
        foreign = run.schema_error()
        if foreign:  # never overwritten by this version: it may hold what this one cannot read
            raise LTBenchError(f"{foreign}; pass --force to set it aside (nothing is deleted) and train again")
        check_data(run, data)
        if run.is_done():
            return RunResult(run, run.read_record(), already_done=True)
    preflight(cfg, data)  # best-val has a val split, the recipes on the first images: before training
    for warning in schedule_warnings(cfg):
        log.warning("%s", warning)
    if force and dist.is_main and run.path.is_dir():
        with run.lock():
            moved = run.set_aside()
        if moved:
            log.info("--force: the previous contents of %s were moved to %s", run.path, moved)
    # before this run seeds anything: teachers are trained (as their own runs) or loaded, frozen
    teachers = load_teachers(cfg, data, device, results, dist, progress, waiting_epochs)
    lock = run.lock() if dist.is_main else contextlib.nullcontext()
    with lock, _log_to(run.log, dist.is_main):
        if dist.is_main:
            _write_config(run, cfg, data)
        for message in teachers.messages:  # on the console and in this run's log
            log.info(message)
        if device.type == "cuda":
            torch.backends.cudnn.deterministic = cfg.train.deterministic
            torch.backends.cudnn.benchmark = not cfg.train.deterministic
        set_tf32(False)  # explicit, whatever torch's default: fp32 recipes compute in fp32 (run.json records it)
        seed_everything(cfg.train.seed + dist.rank)  # as the official DDP codes: masks, Mixup differ per rank
        method = build_method(cfg, data, teachers.modules).to(device)
        log.info(
            "run %s: %s on %s (preset %s, seed %d) -> %s",
            cfg.run_id(),
            cfg.method_name,
            cfg.dataset_name,
            cfg.preset,
            cfg.train.seed,
            run.path,
        )
        trainer = Trainer(cfg, data, method, run, device, dist, progress, teachers.records, waiting_epochs)
        if on_trainer is not None:
            on_trainer(trainer)
        with ImageWatch(data, dist.is_main).watching(trainer):  # val/test images decoded meanwhile
            record = trainer.fit()
    return RunResult(run, record, already_done=False)


# ----------------------------------------------------------------------------- shared runs
# Shared artifacts: runs that other runs need (a DeiT-LT teacher), found by their run id and
# trained once.
#
# An artifact is an ordinary run: its config gives its run id and so its run directory, and its
# ``run.json`` says it is finished. :func:`ensure_trained` returns it, training it first if nobody
# has. When several jobs ask for the same artifact at once (array tasks whose students share a
# teacher), the first takes the run's lock and trains it; the others block on that lock and then
# find it finished: a lock, not a race. The lock is an ``flock`` on the run directory, which holds
# across the nodes of a cluster on NFSv4 and on Lustre/GPFS mounted with flock support.
#
# Launching the artifacts first, as runs of their own (``ltbench sweep``), lets them train with all
# the GPUs they ask for; an artifact trained on demand inside a multi-process job is trained by
# that job's rank 0 alone while the other ranks wait.


def ensure_trained(
    cfg: Config,
    results: str | Path | None = None,
    dist: DistInfo = DistInfo(),
    progress: bool = False,
    poll_seconds: float = 10.0,
    waiting_epochs: int = 0,
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
            return train(cfg, results, progress=progress, waiting_epochs=waiting_epochs)  # finished, or trained here
        except RunLockedError:  # another waiter took the run first: wait for that one
            continue


def final_weights(run: RunDir, map_location: str | torch.device = "cpu") -> dict:
    """The weights a finished run's results come from: ``best.pt`` under best-val selection, else
    the model in its last checkpoint."""
    if run.read_record()["selection"]["policy"] == "best-val" and run.best.exists():
        return torch.load(run.best, map_location=map_location)
    if not run.checkpoint.exists():
        raise LTBenchError(
            f"the finished run {run.path} no longer has its weights ({run.checkpoint.name} was deleted): restore "
            f"that file, or train the run again with `ltbench run --config {run.config} --force` (its record is "
            "set aside, not deleted)"
        )
    return torch.load(run.checkpoint, map_location=map_location, weights_only=False)["model"]
