"""Where jobs run: the cluster options, the submitit executor of each launcher, and what the
scheduler says about submitted jobs.

Launchers: ``slurm`` (sbatch through submitit: one job per run, several runs as one job array),
``local`` (submitit's LocalExecutor: the same job code in subprocesses of this machine) and
``debug`` (submitit's DebugExecutor: in this process, for a debugger).

:class:`ClusterConfig` is typed and strict like the run config: it comes from a small TOML
profile and/or command-line flags, and an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import submitit

from ..config import convert
from ..errors import ConfigError, LTBenchError

LAUNCHERS = ("slurm", "local", "debug")
JOB_NAME = "ltbench"
# the preemption/timeout signal comes this long before the time limit: enough to finish the
# current optimizer step and write a checkpoint before Slurm kills the job
SIGNAL_DELAY_S = 120
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
# sbatch options that come from ClusterConfig fields (option -> field) or that submitit writes
# itself: extra `sbatch` options may not set them
FIELD_SBATCH = {
    "time": "time",
    "nodes": "nodes",
    "ntasks-per-node": "tasks_per_node",
    "gpus-per-node": "gpus_per_node",
    "cpus-per-task": "cpus_per_task",
    "mem": "mem",
    "partition": "partition",
    "account": "account",
}
SUBMITIT_SBATCH = {"array", "output", "error", "open-mode", "signal", "job-name"}


# CPUs per GPU a GPU job asks for unless told: decoding and augmenting JPEGs takes about 80-150
# images/s per core (issue 25), so a ViT-B/16 or ResNet-50 on a recent GPU wants more than the usual
# 8-16 a node has per GPU; 8 is what most GPU partitions can give
DEFAULT_CPUS_PER_GPU = 8


@dataclass
class ClusterConfig:
    """Resources and placement of each job (one job trains one run, all its stages)."""

    partition: str = ""  # "" = the cluster's default partition
    account: str = ""
    time: int = 60  # time limit in minutes (flags and profiles also take Slurm's D-HH:MM:SS forms)
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0  # 0 = one task (DDP process) per GPU, or 1 without GPUs
    # 0 = DEFAULT_CPUS_PER_GPU per task (one task per GPU) on GPU jobs, the partition's default without
    # GPUs; the partition's own default (often 1 CPU) would leave a GPU waiting for JPEG decoding
    cpus_per_task: int = 0
    mem: str = ""  # memory per node, e.g. 64G; "" = the partition's default
    array_parallelism: int = 0  # most array tasks running at once; 0 = no limit (local: 1)
    max_timeouts: int = 3  # requeues after hitting the time limit (preemptions do not count)
    sbatch: dict[str, str | bool] = field(default_factory=dict)  # extra #SBATCH options: qos, constraint, ...
    setup: list[str] = field(default_factory=list)  # shell lines run before the job (module load ...)

    @property
    def tasks(self) -> int:
        """DDP processes per node."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def cpus(self) -> int:
        """CPUs per task to request; 0 leaves it to the partition."""
        if self.cpus_per_task or not self.gpus_per_node:
            return self.cpus_per_task
        return DEFAULT_CPUS_PER_GPU * max(1, self.gpus_per_node // self.tasks)

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks

    @property
    def signal_delay_s(self) -> int:
        """When the preemption/timeout signal comes before the limit (half of a short limit)."""
        return min(SIGNAL_DELAY_S, self.time * 30)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_time(value: Any) -> int:
    """A Slurm time limit in minutes: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M`` or ``D-H:M:S``
    (seconds round up), or a number of minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    else:
        text = str(value).strip()
        match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not match:
            raise ConfigError(f"time: cannot read {value!r}; use minutes or Slurm's [D-]HH:MM:SS")
        days, a, b, c = (int(g) if g is not None else None for g in match.groups())
        if days is not None:  # D-H, D-H:M, D-H:M:S
            seconds = ((days * 24 + a) * 60 + (b or 0)) * 60 + (c or 0)
        elif c is not None:  # H:M:S
            seconds = (a * 60 + b) * 60 + c
        elif b is not None:  # M:S
            seconds = a * 60 + b
        else:  # M
            seconds = a * 60
        minutes = -(-seconds // 60)
    if minutes < 1:
        raise ConfigError(f"time: the limit must be at least one minute, got {value!r}")
    return minutes


def _sbatch_options(value: Any, where: str) -> dict[str, str | bool]:
    if not isinstance(value, Mapping):
        raise ConfigError(f'{where}: expected a table of sbatch options (e.g. qos = "high"), got {value!r}')
    options = {}
    for key, option in value.items():
        name = str(key).replace("_", "-")
        if name in FIELD_SBATCH:
            own = FIELD_SBATCH[name]
            raise ConfigError(
                f"{where}.{key}: set it with --{own.replace('_', '-')} (`{own}` in a profile), "
                "not as an extra sbatch option"
            )
        if name in SUBMITIT_SBATCH:
            raise ConfigError(f"{where}.{key}: submitit writes this sbatch option itself")
        if option is not False:  # true: a flag without a value, such as exclusive
            options[name] = True if option is True else str(option)
    return options


def apply_cluster_options(cluster: ClusterConfig, options: Mapping[str, Any], where: str) -> None:
    """Set fields from a profile table or from flags, strictly: unknown keys and bad values are
    errors. ``sbatch`` options are merged and ``setup`` lines appended to what is already set."""
    hints = typing.get_type_hints(ClusterConfig)
    names = [f.name for f in dataclasses.fields(ClusterConfig)]
    for key, value in options.items():
        path = f"{where}.{key}"
        if key not in names:
            raise ConfigError(f"unknown cluster option {path!r}; valid options: {', '.join(names)}")
        if key == "time":
            cluster.time = parse_time(value)
        elif key == "sbatch":
            cluster.sbatch.update(_sbatch_options(value, path))
        elif key == "setup":
            cluster.setup.extend(convert(value, hints[key], path))
        else:
            setattr(cluster, key, convert(value, hints[key], path))
    if cluster.nodes < 1:
        raise ConfigError(f"{where}: nodes must be at least 1")
    for name in ("gpus_per_node", "tasks_per_node", "cpus_per_task", "array_parallelism", "max_timeouts"):
        if getattr(cluster, name) < 0:
            raise ConfigError(f"{where}: {name} cannot be negative")
    if cluster.mem and not re.fullmatch(r"\d+[KMGT]?", cluster.mem):
        raise ConfigError(f"{where}: mem={cluster.mem!r}; use a size such as 64G or 500M")


def load_profile(path: str | os.PathLike) -> dict:
    """A cluster profile: a TOML file of ClusterConfig keys (``sbatch`` as a table)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise LTBenchError("reading a cluster profile needs Python 3.11+ or `pip install tomli`") from None
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"cluster profile {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"cluster profile {path} is not valid TOML: {err}") from None


def cluster_config(
    profile: str | os.PathLike | None = None, base: ClusterConfig | None = None, **flags: Any
) -> ClusterConfig:
    """``base`` (default: the defaults), then the profile file if any, then the flags that were
    given (not None)."""
    cluster = dataclasses.replace(base, sbatch=dict(base.sbatch), setup=list(base.setup)) if base else ClusterConfig()
    if profile:
        apply_cluster_options(cluster, load_profile(profile), f"profile {profile}")
    apply_cluster_options(cluster, {k: v for k, v in flags.items() if v not in (None, [], {})}, "flags")
    return cluster


def cluster_from_dict(data: Mapping[str, Any]) -> ClusterConfig:
    """Rebuild a ClusterConfig saved with ``to_dict`` (a sweep manifest)."""
    cluster = ClusterConfig()
    apply_cluster_options(cluster, data, "manifest cluster")
    return cluster


# ----------------------------------------------------------------------------- executors


def slurm_parameters(cluster: ClusterConfig) -> dict[str, Any]:
    """Parameters of submitit's SlurmExecutor (its names) for one job of ``cluster``."""
    params: dict[str, Any] = {
        "job_name": JOB_NAME,
        "time": cluster.time,
        "nodes": cluster.nodes,
        "ntasks_per_node": cluster.tasks,
        "signal_delay_s": cluster.signal_delay_s,
    }
    optional = {
        "partition": cluster.partition,
        "account": cluster.account,
        "mem": cluster.mem,
        "gpus_per_node": cluster.gpus_per_node,
        "cpus_per_task": cluster.cpus,
        "array_parallelism": cluster.array_parallelism,
        "setup": list(cluster.setup),
        "additional_parameters": dict(cluster.sbatch),
    }
    params.update({k: v for k, v in optional.items() if v})
    if cluster.world_size > 1:  # a DDP rank that dies takes the step down instead of leaving it hung
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    return params


def submission_preview(cluster: ClusterConfig, folder: str | os.PathLike, array_size: int | None = None) -> str:
    """What ``sweep --dry-run`` shows of a Slurm submission: the parameters ltbench gives
    submitit's ``SlurmExecutor`` (submitit's names; it writes each as an ``#SBATCH`` line), the
    array and where the logs and the sbatch file go.

    submitit writes the sbatch file only when it submits (``job.paths.submission_file``) and has no
    public function that renders it without submitting, so the preview shows its inputs.
    """
    lines = ["submitit SlurmExecutor parameters (submitit writes each as an #SBATCH line):"]
    lines += [f"  {key} = {value!r}" for key, value in sorted(slurm_parameters(cluster).items())]
    if array_size:
        at_once = f", at most {cluster.array_parallelism} at once" if cluster.array_parallelism else ""
        lines.append(f"job array: {array_size} tasks{at_once}, one per run")
    job = "<array id>" if array_size else "<job id>"
    lines.append(f"logs: {Path(folder) / job}{'_<index>' if array_size else ''}_<task>_log.out and .err")
    lines.append(f"sbatch file, written on submission: {Path(folder) / job}_submission.sh")
    return "\n".join(lines) + "\n"


def make_executor(launcher: str, folder: str | os.PathLike, cluster: ClusterConfig) -> submitit.Executor:
    """The one place executors are made: ``slurm``, ``local`` or ``debug``."""
    if launcher == "slurm":
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise LTBenchError(
                "--launcher slurm needs Slurm's sbatch and srun here (run it on a login node); "
                "use --launcher local to run on this machine"
            )
        executor = submitit.SlurmExecutor(folder, max_num_timeout=cluster.max_timeouts)
        executor.update_parameters(**slurm_parameters(cluster))
        return executor
    if launcher == "local":
        if cluster.nodes > 1:
            raise ConfigError("--launcher local runs on this machine: --nodes must be 1")
        executor = submitit.LocalExecutor(folder, max_num_timeout=cluster.max_timeouts)
        params = {
            "timeout_min": cluster.time,
            "tasks_per_node": cluster.tasks,
            "gpus_per_node": cluster.gpus_per_node,
            "signal_delay_s": cluster.signal_delay_s,
        }
        if cluster.setup:
            params["setup"] = list(cluster.setup)
        executor.update_parameters(**params)
        return executor
    if launcher == "debug":
        return submitit.DebugExecutor(folder)
    raise ConfigError(f"unknown launcher {launcher!r}; use one of {', '.join(LAUNCHERS)}")


T = TypeVar("T")


def split_array(items: Sequence[T], max_size: int) -> list[list[T]]:
    """Consecutive chunks of at most ``max_size`` items: one job array each (Slurm refuses arrays
    with more tasks than its MaxArraySize)."""
    if max_size < 1:
        raise ValueError(f"max_size must be positive, got {max_size}")
    return [list(items[i : i + max_size]) for i in range(0, len(items), max_size)]


def max_array_size() -> int:
    """The cluster's MaxArraySize (``scontrol show config``); Slurm's default if unreadable."""
    try:
        text = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    return parse_max_array_size(text)


def parse_max_array_size(scontrol_config: str) -> int:
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", scontrol_config, re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


# ----------------------------------------------------------------------------- scheduler states


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """sacct's state of each job id (``123`` or array task ``123_4``): PENDING, RUNNING,
    COMPLETED, FAILED, CANCELLED, TIMEOUT, ... Ids that accounting does not know are left out."""
    job_ids = list(job_ids)
    mains = sorted({j.split("_")[0] for j in job_ids})
    if not mains:
        return {}
    cmd = ["sacct", "-X", "--parsable2", "-o", "JobID,State", "-j", ",".join(mains)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        raise LTBenchError(f"cannot ask Slurm for job states ({' '.join(cmd)}): {err}") from None
    if out.returncode:
        raise LTBenchError(f"`{' '.join(cmd)}` failed: {out.stderr.strip()}")
    return parse_sacct(out.stdout, job_ids)


def parse_sacct(text: str, job_ids: Iterable[str]) -> dict[str, str]:
    """States of ``job_ids`` in ``sacct --parsable2 -o JobID,State`` output; pending array ranges
    such as ``123_[2-5%2]`` cover each of their tasks (submitit's parser)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    info = SlurmInfoWatcher().read_info(text)
    return {j: info[j]["State"].split()[0] for j in job_ids if j in info}  # "CANCELLED by 0" -> CANCELLED


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
