"""Sweeps: a grid of runs (methods x datasets x seeds) submitted as Slurm job arrays or run on this
machine, its manifest, the state of every run, and relaunching exactly the unfinished ones.

A sweep lives in ``<results>/sweeps/<name>/``: ``sweep.json`` (the manifest) and ``jobs/``
(submitit's pickles and each job's logs). The name defaults to a hash of the grid's run ids, so
the same command finds the same sweep again: finished runs are skipped, runs whose job is queued
or running are left alone, and every other run is (re)submitted and resumes from its checkpoint.
Run directories come from run ids alone (``<results>/runs/<dataset>/<method>/<run_id>``), never
from job ids or timestamps, so every submission of a run writes to the same place.

``sweep.json``::

    {"schema": 1, "name": "sweep-3f2a...", "launcher": "slurm", "results": "/abs/results",
     "cluster": {ClusterConfig fields},
     "runs": {"<run_id>": {"method": "ce", "dataset": "cifar100_lt", "preset": "paper", "seed": 0,
                           "config": {resolved config}, "jobs": ["4182_0", "4190_3"]}}}

``jobs`` lists every job that was submitted for the run, the latest last.

Runs that need runs: a run whose method ``requires`` teacher runs lists them in ``"teachers":
{name: run_id}``, and each teacher is an entry of its own (``"role": "teacher"``), added once
however many students share it. On Slurm the unfinished teachers are submitted first, and the
students as an array that starts only after them (``--dependency=afterok:...``,
``--kill-on-invalid-dep=yes``): a failed teacher cancels its students, and ``ltbench status``
shows them failed with the teacher's run directory and log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, resolve_config
from ..errors import ConfigError, LTBenchError
from ..records import RunDir, atomic_write_json, results_root
from .slurm import (
    ClusterConfig,
    cluster_from_dict,
    make_executor,
    max_array_size,
    process_alive,
    slurm_states,
    split_array,
)

if TYPE_CHECKING:
    import submitit

    from .job import TrainJob

log = logging.getLogger("ltbench")

MANIFEST_SCHEMA = 1
WAIT_POLL_S = 5.0  # seconds between two looks at the scheduler while waiting for a sweep
UNKNOWN_GRACE_S = 120.0  # how long a submitted job may be missing from accounting while waiting
LIVE_STATES = ("running", "pending")
PROGRESS_EVERY_S = 60.0  # seconds between two progress lines of a local sweep
ERROR_LINES = 8  # lines of a failed job's error shown by `ltbench status`
# Slurm states of jobs that will still run (pending) or are running; any other state is final
SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED"}


# ----------------------------------------------------------------------------- the grid


def parse_seeds(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"--seeds: cannot read {part!r}; use e.g. 0-2 or 0,1,5")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"--seeds: empty range {part!r}")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
    return seeds


def expand_grid(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    preset: str | None = None,
    sets: Sequence[str] = (),
) -> list[Config]:
    """Every (method, dataset, seed) resolved with the same preset and overrides; a config that
    appears twice (same run id) is kept once."""
    configs: dict[str, Config] = {}
    for method in methods:
        for dataset in datasets:
            for seed in seeds:
                cfg = resolve_config(method, dataset, preset, list(sets), seed)
                configs.setdefault(cfg.run_id(), cfg)
    if not configs:
        raise ConfigError("the sweep is empty: give at least one method, dataset and seed")
    return list(configs.values())


def sweep_name(run_ids: Iterable[str]) -> str:
    return "sweep-" + hashlib.sha256(",".join(sorted(run_ids)).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- the manifest


class Sweep:
    """A sweep directory and its manifest."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = Path(path)
        self.manifest = manifest

    manifest_path = property(lambda self: self.path / "sweep.json")
    jobs_folder = property(lambda self: self.path / "jobs")
    runs = property(lambda self: self.manifest["runs"])
    launcher = property(lambda self: self.manifest["launcher"])
    results = property(lambda self: Path(self.manifest["results"]))

    @property
    def cluster(self) -> ClusterConfig:
        return cluster_from_dict(self.manifest["cluster"])

    @classmethod
    def open(
        cls,
        configs: Sequence[Config],
        launcher: str,
        cluster: ClusterConfig,
        results: str | Path | None = None,
        name: str | None = None,
    ) -> Sweep:
        """The sweep of these runs: its existing manifest (runs added, launcher and cluster
        updated to this submission's), or a new one."""
        root = results_root(results).resolve()
        path = root / "sweeps" / (name or sweep_name(c.run_id() for c in configs))
        if (path / "sweep.json").exists():
            sweep = cls.load(path)
            submitted = any(entry["jobs"] for entry in sweep.runs.values())
            if submitted and sweep.launcher != launcher:
                raise ConfigError(
                    f"sweep {path} was launched with --launcher {sweep.launcher}; relaunch it "
                    f"with that launcher, or give this one another --name"
                )
        else:
            sweep = cls(path, {"schema": MANIFEST_SCHEMA, "name": path.name, "results": str(root), "runs": {}})
        sweep.manifest.update(launcher=launcher, cluster=cluster.to_dict())
        for cfg in configs:
            sweep._add(cfg)
        return sweep

    def _add(self, cfg: Config, role: str = "") -> str:
        """Add a run (and, first, the teacher runs it requires) to the manifest; its run id."""
        teachers = {name: self._add(tcfg, "teacher") for name, tcfg in required_runs(cfg).items()}
        entry = self.runs.setdefault(
            cfg.run_id(),
            {
                "method": cfg.method_name,
                "dataset": cfg.dataset_name,
                "preset": cfg.preset,
                "seed": cfg.train.seed,
                "config": cfg.to_dict(),
                "jobs": [],
            },
        )
        if teachers:
            entry["teachers"] = teachers
        if role:
            entry["role"] = role
        return cfg.run_id()

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        path = Path(path)
        if path.name == "sweep.json":
            path = path.parent
        try:
            manifest = json.loads((path / "sweep.json").read_text())
        except FileNotFoundError:
            raise LTBenchError(f"{path} is not a sweep directory (no sweep.json)") from None
        if manifest.get("schema") != MANIFEST_SCHEMA:
            raise LTBenchError(f"{path}/sweep.json has schema {manifest.get('schema')}, expected {MANIFEST_SCHEMA}")
        return cls(path, manifest)

    def save(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)

    def run_dir(self, run_id: str) -> RunDir:
        entry = self.runs[run_id]
        return RunDir.of(self.results, entry["dataset"], entry["method"], run_id)

    def latest_job(self, run_id: str) -> str | None:
        jobs = self.runs[run_id]["jobs"]
        return jobs[-1] if jobs else None


def required_runs(cfg: Config) -> dict[str, Config]:
    """The teacher runs ``cfg`` needs trained: its method's ``requires`` but those replaced by a
    checkpoint file (``method.<name>_checkpoint``)."""
    from ..registry import METHODS, load_plugins

    load_plugins()
    needed = METHODS.get(cfg.method_name).requires(cfg)
    return {name: tcfg for name, tcfg in needed.items() if not getattr(cfg.method, f"{name}_checkpoint", "")}


# ----------------------------------------------------------------------------- states


@dataclass
class RunStatus:
    run_id: str
    method: str
    dataset: str
    seed: int
    state: str  # done, running, pending, failed, not submitted, unknown (or a run dir's own state)
    job: str = ""
    detail: str = ""  # the scheduler's state, or the last lines of a failed job's error


def _tail(text: str, lines: int = ERROR_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def job_error(folder: Path, job_id: str) -> str:
    """The last lines of a job's error: the traceback submitit saved, else its stderr log."""
    from submitit.core.utils import JobPaths, pickle_load

    paths = JobPaths(folder, job_id=job_id, task_id=0)
    if paths.result_pickle.exists():
        outcome, value = pickle_load(paths.result_pickle)
        if outcome == "error":
            return _tail(str(value))
    if paths.stderr.exists():
        return _tail(paths.stderr.read_text(errors="replace"))
    return ""


def _failed(sweep: Sweep, job: str, why: str) -> tuple[str, str]:
    error = job_error(sweep.jobs_folder, job)
    return "failed", why + (f"\n{error}" if error else "")


def _slurm_job_state(sweep: Sweep, run: RunDir, job: str, scheduler: str | None) -> tuple[str, str]:
    if run.is_locked():  # training now: accounting (slurmdbd) can lag slurmctld by seconds
        return "running", "" if scheduler in (None, "RUNNING") else f"accounting still says {scheduler}"
    if scheduler is None:
        return "unknown", f"job {job} is not (yet) in Slurm's accounting (sacct)"
    if scheduler in SLURM_PENDING:
        return "pending", "" if scheduler == "PENDING" else scheduler
    if scheduler in SLURM_RUNNING:
        return "running", "" if scheduler == "RUNNING" else scheduler
    return _failed(sweep, job, f"job {job} ended {scheduler} without finishing the run")


def _local_job_state(sweep: Sweep, run: RunDir, job: str) -> tuple[str, str]:
    """Local (and debug) jobs: the run's lock and the job's process say more than a scheduler."""
    from submitit.core.utils import JobPaths

    if run.is_locked():
        return "running", ""
    if (
        not JobPaths(sweep.jobs_folder, job_id=job, task_id=0).result_pickle.exists()
        and job.isdigit()
        and process_alive(int(job))
    ):
        return "running", "starting"
    return _failed(sweep, job, f"job {job} ended without finishing the run")


def status(sweep: Sweep) -> list[RunStatus]:
    """The state of every run of the sweep, from its run directory and its latest job."""
    submitted = [
        sweep.latest_job(rid) for rid in sweep.runs if sweep.latest_job(rid) and not sweep.run_dir(rid).is_done()
    ]
    scheduler, unreachable = {}, ""
    if sweep.launcher == "slurm" and submitted:
        try:
            scheduler = slurm_states(submitted)
        except LTBenchError as err:  # e.g. results copied to a machine without Slurm
            unreachable = str(err)
    out = []
    for rid, entry in sweep.runs.items():
        run = sweep.run_dir(rid)
        job = sweep.latest_job(rid) or ""
        if run.is_done():
            state, detail = "done", ""
        elif not job:
            state, detail = "not submitted", "resumable from its checkpoint" if run.checkpoint.exists() else ""
        elif unreachable:
            state, detail = "unknown", unreachable
        elif sweep.launcher == "slurm":
            state, detail = _slurm_job_state(sweep, run, job, scheduler.get(job))
        else:
            state, detail = _local_job_state(sweep, run, job)
        out.append(RunStatus(rid, entry["method"], entry["dataset"], entry["seed"], state, job, detail))
    return _blame_teachers(sweep, out)


def _blame_teachers(sweep: Sweep, statuses: list[RunStatus]) -> list[RunStatus]:
    """A student whose teacher failed cannot run: it is failed too, naming the teacher's run
    directory and log. Teachers are marked in ``detail`` so the chain shows in ``ltbench status``."""
    by_id = {s.run_id: s for s in statuses}
    for s in statuses:
        entry = sweep.runs[s.run_id]
        if entry.get("role") == "teacher" and not s.detail:
            s.detail = "teacher"
        for name, tid in entry.get("teachers", {}).items():
            teacher = by_id.get(tid)
            if teacher is None or s.state == "done":
                continue
            if teacher.state in LIVE_STATES and s.state == "pending":
                s.detail = f"waits for its {name} run {tid}"
            if teacher.state != "failed":
                continue
            run = sweep.run_dir(tid)
            s.state = "failed"
            s.detail = f"its {name} run {tid} failed: see {run.path} and its log {run.log}" + (
                f"\n{teacher.detail}" if teacher.detail else ""
            )
    return statuses


def run_detail(run: RunDir) -> str:
    """What ``status`` says beside a run's own state: a crashed run's error and its log."""
    state = run.state()
    if state == "failed":
        return f"{run.last_error()} (log: {run.log})"
    if state == "damaged record":
        return f"{run.record_error()}; run the same command to rewrite it"
    if state == "other schema":
        return f"{run.record_error()}; `ltbench run --force` sets it aside and trains again"
    return ""


def all_statuses(results: str | Path | None = None) -> list[RunStatus]:
    """Every run under the results root: through its sweep's manifest when it has one (the latest
    submission wins), else from its run directory alone (done, running, resumable, not started)."""
    root = results_root(results)
    found: dict[str, RunStatus] = {}
    manifests = sorted((root / "sweeps").glob("*/sweep.json"), key=lambda p: p.stat().st_mtime)
    for manifest in manifests:
        for s in status(Sweep.load(manifest.parent)):
            if s.run_id not in found or s.job:
                found[s.run_id] = s
    for config_path in sorted((root / "runs").glob("*/*/*/config.json")):
        run = RunDir(config_path.parent)
        if run.path.name in found:
            continue
        try:
            cfg = json.loads(config_path.read_text())
            method, dataset, seed = cfg["method_name"], cfg["dataset_name"], cfg["train"]["seed"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            detail = f"{config_path}: {err}"
            found[run.path.name] = RunStatus(run.path.name, "?", "?", -1, "damaged config", detail=detail)
            continue
        found[run.path.name] = RunStatus(run.path.name, method, dataset, seed, run.state(), detail=run_detail(run))
    return list(found.values())


# ----------------------------------------------------------------------------- submission


def submit(sweep: Sweep, poll: float = 2.0) -> list[str]:
    """Submit every run that is neither done nor queued/running; returns their run ids.

    Slurm: one job array per MaxArraySize runs, then return (jobs run on the cluster). Local: run
    the jobs on this machine, ``array_parallelism`` (default 1) at a time, and return when all
    have ended. Debug: run them one after another in this process.
    """
    todo = [s.run_id for s in status(sweep) if s.state not in ("done", *LIVE_STATES)]
    if not todo:
        return []
    sweep.save()  # the manifest exists before any job does
    cluster = sweep.cluster
    todo.sort(key=lambda rid: sweep.runs[rid].get("role") != "teacher")  # teachers first
    executor = make_executor(sweep.launcher, sweep.jobs_folder, cluster)
    if sweep.launcher == "slurm":
        _submit_slurm(sweep, executor, todo)
    else:
        _run_here(sweep, executor, todo, max(1, cluster.array_parallelism), poll)
    return todo


def _submit_slurm(sweep: Sweep, executor: submitit.Executor, todo: list[str]) -> None:
    """Teachers first (arrays of their own), then the other runs as arrays grouped by the jobs
    they must wait for (``afterok`` on the latest job of each unfinished teacher)."""
    teachers = [rid for rid in todo if sweep.runs[rid].get("role") == "teacher"]
    if teachers:
        _submit_arrays(sweep, executor, teachers)
    groups: dict[tuple[str, ...], list[str]] = {}
    for rid in todo:
        if rid not in teachers:
            groups.setdefault(_after(sweep, rid), []).append(rid)
    for after, rids in groups.items():
        if not after:
            _submit_arrays(sweep, executor, rids)
            continue
        base = executor.parameters.get("additional_parameters") or {}
        dependency = {"dependency": "afterok:" + ":".join(after), "kill_on_invalid_dep": "yes"}
        executor.update_parameters(additional_parameters={**base, **dependency})
        try:
            _submit_arrays(sweep, executor, rids)
        finally:
            executor.update_parameters(additional_parameters=base)


def _after(sweep: Sweep, rid: str) -> tuple[str, ...]:
    """The latest jobs of the unfinished teachers of run ``rid``."""
    jobs = {
        sweep.latest_job(tid)
        for tid in sweep.runs[rid].get("teachers", {}).values()
        if sweep.latest_job(tid) and not sweep.run_dir(tid).is_done()
    }
    return tuple(sorted(jobs))


def _submit_arrays(sweep: Sweep, executor: submitit.Executor, rids: list[str]) -> None:
    for chunk in split_array(rids, max_array_size()):
        jobs = executor.submit_array([_job(sweep, rid) for rid in chunk])
        for rid, job in zip(chunk, jobs):
            sweep.runs[rid]["jobs"].append(job.job_id)
        sweep.save()


def _job(sweep: Sweep, run_id: str, threads: int | None = None) -> TrainJob:
    from .job import TrainJob  # torch: only when a job is made, never for `ltbench status`

    return TrainJob(sweep.runs[run_id]["config"], str(sweep.results), threads)


def _last_line(path: Path) -> str:
    """The last line of a run's log.txt (its latest epoch or progress line), without its timestamp."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return re.sub(r"^\S+ \S+ [A-Z]+ ", "", lines[-1]) if lines else ""


def progress_line(sweep: Sweep, queued: int, running: dict, ended: list[float], failed: int, parallel: int) -> str:
    """Where a local sweep is: runs ended (failed) / running / queued, each running run's latest log
    line, and the sweep's ETA at the mean time of the runs that ended so far."""
    total = queued + len(running) + len(ended)
    line = f"sweep: {len(ended)} of {total} runs ended ({failed} failed), {len(running)} running, {queued} queued"
    if ended and (queued or running):
        waves = -(-(queued + len(running)) // parallel)
        line += f"; ETA ~{_duration(waves * sum(ended) / len(ended))} at the mean time of the ended runs"
    for rid in running:
        latest = _last_line(sweep.run_dir(rid).log)
        line += f"\n  {rid} ({sweep.runs[rid]['method']} seed {sweep.runs[rid]['seed']}): {latest or 'starting'}"
    return line


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def _run_here(
    sweep: Sweep,
    executor: submitit.Executor,
    todo: list[str],
    parallel: int,
    poll: float,
    every: float = PROGRESS_EVERY_S,
) -> None:
    processes = parallel * sweep.cluster.tasks
    threads = max(1, (os.cpu_count() or 1) // processes) if processes > 1 else None  # share the cores
    queue, running, started, ended, failed = list(todo), {}, {}, [], 0
    last = time.monotonic()
    while queue or running:
        while queue and len(running) < parallel:
            rid = queue.pop(0)
            job = executor.submit(_job(sweep, rid, threads))
            sweep.runs[rid]["jobs"].append(str(job.job_id))
            sweep.save()
            log.info(
                "started %s (%s on %s, seed %s) as job %s",
                rid,
                sweep.runs[rid]["method"],
                sweep.runs[rid]["dataset"],
                sweep.runs[rid]["seed"],
                job.job_id,
            )
            running[rid], started[rid] = job, time.monotonic()
        for rid, job in list(running.items()):
            if job.done():  # a debug job runs here, in this process (and drops into pdb on an error)
                del running[rid]
                ended.append(time.monotonic() - started[rid])
                error = job.exception()
                failed += error is not None
                log.info("%s %s", rid, "ended" if error is None else f"failed: {str(error).strip().splitlines()[-1]}")
        if running and every > 0 and time.monotonic() - last >= every:
            last = time.monotonic()
            log.info("%s", progress_line(sweep, len(queue), running, ended, failed, parallel))
        if running:
            time.sleep(poll)


def wait(sweep: Sweep, poll: float | None = None, timeout: float | None = None) -> list[RunStatus]:
    """Poll until no run of the sweep is pending or running (or, for a while, not yet known to
    accounting: a job just submitted may take a moment to appear in sacct)."""
    poll = poll or WAIT_POLL_S
    start = time.monotonic()
    while True:
        statuses = status(sweep)
        live = LIVE_STATES + (("unknown",) if time.monotonic() - start < UNKNOWN_GRACE_S else ())
        if not any(s.state in live for s in statuses):
            return statuses
        if timeout is not None and time.monotonic() - start > timeout:
            raise LTBenchError(f"sweep {sweep.path} still has queued or running jobs after {timeout:.0f} s")
        time.sleep(poll)
