"""Run directories and atomic writes.

One directory per run, ``<results>/runs/<dataset>/<method>/<run_id>/``:

- ``config.json``: the resolved configuration (written first);
- ``metrics.jsonl``: one line per evaluation (stage, epoch, split, per-class counts);
- ``checkpoint.pt``: everything needed to resume, rewritten atomically;
- ``best.pt``: model weights of the best validation epoch (``best-val`` selection only);
- ``data.json``: the fingerprint of the data the run trains on (written with ``config.json``); a
  run directory is bound to that data, and other data is refused (``--force`` sets the old run aside);
- ``steps.csv``: training loss, learning rate and every loss term, every ``train.log_every`` steps;
- ``log.txt``: the run's log lines;
- ``run.json``: the final record, written last and atomically. A readable one means "done";
- ``superseded/<time>/``: earlier contents of the directory, set aside by ``ltbench run --force``.

Every file is written to a temporary name in the same directory and renamed over the target, so a
crash at any moment leaves either the old or the new version, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import LTBenchError

RECORD_SCHEMA = 1  # the run.json layout this ltbench writes
READ_SCHEMAS = (1,)  # the layouts it reads (a record without ``schema`` predates the field: layout 1)
RECORD_KEYS = ("run_id", "method", "dataset", "seed", "dataset_fingerprint", "train_counts", "splits")


def record_layout_error(record: Any) -> str | None:
    """Why ``record`` (a parsed ``run.json``) is not a record this ltbench can read, or None: another
    ``schema``, a missing field, or per-class heads that are not ``{"correct": [...], "total": [...]}``
    lists as long as ``train_counts``. The one check that ``report``, ``show``, ``run`` and
    ``status`` share, so a record from another version is named instead of crashing any of them."""
    if not isinstance(record, dict):
        return "not a run record (not a JSON object)"
    schema = record.get("schema", 1)
    if schema not in READ_SCHEMAS:
        readable = ", ".join(map(str, READ_SCHEMAS))
        return (
            f"written with run.json schema {schema!r}; this ltbench reads schema {readable} "
            "(read it with the ltbench version that wrote it)"
        )
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        return f"not a run record (no {', '.join(missing)})"
    counts, splits = record["train_counts"], record["splits"]
    if not isinstance(counts, list) or not isinstance(splits, dict):
        return "not a run record (train_counts is not a list, or splits not an object)"
    for split, body in splits.items():
        heads = body.get("heads") if isinstance(body, dict) else None
        if not isinstance(heads, dict) or "main" not in heads:
            return f"split {split!r} has no heads.main (another layout of run.json, schema {schema})"
        for name, head in heads.items():
            ok = isinstance(head, dict) and all(
                isinstance(head.get(k), list) and len(head[k]) == len(counts) for k in ("correct", "total")
            )
            if not ok:
                return (
                    f"head {name!r} of split {split!r} is not correct/total lists of {len(counts)} classes "
                    f"(another layout of run.json, schema {schema})"
                )
    return None


def results_root(path: str | os.PathLike | None = None) -> Path:
    """``--out`` if given, else ``$LTBENCH_RESULTS``, else ``./results``."""
    return Path(path or os.environ.get("LTBENCH_RESULTS") or "results")


def readable_root(path: str | os.PathLike | None, option: str = "--root") -> Path:
    """``results_root(path)``, checked: an existing directory (a missing one is not an empty one)."""
    root = results_root(path)
    if not root.exists():
        raise LTBenchError(
            f"{option} {root}: no such directory; give the results directory that holds runs/ "
            "(ltbench run --out DIR, default ./results)"
        )
    if not root.is_dir():
        raise LTBenchError(f"{option} {root} is a file, not a directory; give the results directory that holds runs/")
    return root


def writable_dir(path: str | os.PathLike | None, option: str = "--out") -> Path:
    """``results_root(path)``, checked: a directory (made if absent) this process can write in."""
    root = results_root(path)
    if root.exists() and not root.is_dir():
        raise LTBenchError(f"{option} {root} is a file, not a directory; give a directory for the results")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise LTBenchError(
            f"{option} {root}: cannot write there ({err.strerror or err}); give a directory you can write to"
        ) from None
    return root


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # created like open() would create it (0666 less the umask, which the kernel applies), not with
    # mkstemp's 0600, so a shared results folder or a published report stays readable by the group
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text), mode="w")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, allow_nan=True) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch  # here: `ltbench status`, `show` and `report` never need torch

    _atomic(Path(path), lambda f: torch.save(obj, f))


def git_sha(where: Path | None = None) -> str:
    """The commit of the ltbench source tree, with ``-dirty`` for uncommitted changes; "" if none."""
    where = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


class RunDir:
    """The files of one run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, results: Path, dataset: str, method: str, run_id: str) -> RunDir:
        return cls(Path(results) / "runs" / dataset / method / run_id)

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    best = property(lambda self: self.path / "best.pt")
    record = property(lambda self: self.path / "run.json")
    log = property(lambda self: self.path / "log.txt")
    data = property(lambda self: self.path / "data.json")
    steps = property(lambda self: self.path / "steps.csv")
    superseded = property(lambda self: self.path / "superseded")

    def is_done(self) -> bool:
        """True when ``run.json`` holds a readable record (a damaged one is not "done")."""
        return self.record.exists() and self.record_error() is None

    def record_error(self) -> str | None:
        """Why ``run.json`` is not a usable record (empty, torn, not a record), or None."""
        try:
            record = json.loads(self.record.read_text())
        except FileNotFoundError:
            return "no run.json"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"{self.record} is not readable JSON ({err})"
        problem = record_layout_error(record)
        return f"{self.record}: {problem}" if problem else None

    def schema_error(self) -> str | None:
        """The ``record_error`` of a readable record of another schema (written by another ltbench
        version, never rewritten by this one), else None."""
        try:
            record = json.loads(self.record.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if isinstance(record, dict) and record.get("schema", 1) not in READ_SCHEMAS:
            return self.record_error()
        return None

    def is_locked(self) -> bool:
        """True while a process holds the run's lock (it is training right now, on this host)."""
        lock = self.path / ".lock"
        if not lock.exists():
            return False
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def state(self) -> str:
        """done, running, other schema (a record of another ltbench version), damaged record,
        resumable (has a checkpoint), failed (its log ends in an error) or not started."""
        if self.is_done():
            return "done"
        if self.is_locked():
            return "running"
        if self.record.exists():
            return "other schema" if self.schema_error() else "damaged record"
        if self.last_error():
            return "failed"
        return "resumable" if self.checkpoint.exists() else "not started"

    def last_error(self) -> str:
        """The error that ended the last attempt, from the end of ``log.txt``; "" if it did not fail."""
        if not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").rstrip().splitlines()
        for line in reversed(lines[-50:]):
            if " ERROR " in line:
                return line.split(" ERROR ", 1)[1]
            if " INFO " in line or " WARNING " in line:
                return ""
        return ""

    def read_record(self) -> dict:
        error = self.record_error()
        if error:
            raise LTBenchError(f"{error}; delete it (the checkpoint is kept) and run the same command to rewrite it")
        return json.loads(self.record.read_text())

    def read_data(self) -> dict | None:
        """What ``data.json`` says about the data this run trains on; None if absent or unreadable."""
        try:
            data = json.loads(self.data.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) and "fingerprint" in data else None

    def set_aside(self) -> Path | None:
        """Move this run's files into ``superseded/<time>/`` (nothing is deleted); the lock stays."""
        files = [p for p in self.path.iterdir() if p.name not in (".lock", "superseded")] if self.path.is_dir() else []
        if not files:
            return None
        dest = self.superseded / time.strftime("%Y%m%d-%H%M%S")
        while dest.exists():
            dest = dest.with_name(dest.name + "_")
        dest.mkdir(parents=True)
        for p in files:
            os.replace(p, dest / p.name)
        return dest

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        lines = []
        for line in self.metrics.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a crash mid-append: dropped
                    continue
        return lines

    def append_metrics(self, entry: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def keep_metrics(self, keep: Callable[[dict], bool]) -> None:
        """Rewrite metrics.jsonl keeping only matching lines (drops lines written after the
        checkpoint a resumed run restarts from)."""
        lines = [json.dumps(e, separators=(",", ":")) for e in self.read_metrics() if keep(e)]
        atomic_write_text(self.metrics, "".join(line + "\n" for line in lines))

    @contextlib.contextmanager
    def lock(self, wait: bool = False) -> Iterator[None]:
        """Exclusive lock on the run directory: two processes never train the same run.

        A run held by another process is an error (:class:`RunLockedError`), unless ``wait``:
        then this blocks until that process lets go (shared artifacts wait for their trainer).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise RunLockedError(
                    f"run {self.path} is being trained by another process right now; wait for it "
                    "(`ltbench status`) or stop that process first"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class RunLockedError(LTBenchError):
    """The run is being trained by another process (its directory's lock is held)."""
