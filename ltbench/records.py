"""Run directories and atomic writes.

One directory per run, ``<results>/runs/<dataset>/<method>/<run_id>/``:

- ``config.json``: the resolved configuration (written first);
- ``metrics.jsonl``: one line per evaluation (stage, epoch, split, per-class counts);
- ``checkpoint.pt``: everything needed to resume, rewritten atomically;
- ``best.pt``: model weights of the best validation epoch (``best-val`` selection only);
- ``log.txt``: the run's log lines;
- ``run.json``: the final record, written last and atomically. Its presence means "done".

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import LTBenchError

RECORD_SCHEMA = 1


def results_root(path: str | os.PathLike | None = None) -> Path:
    """``--out`` if given, else ``$LTBENCH_RESULTS``, else ``./results``."""
    return Path(path or os.environ.get("LTBENCH_RESULTS") or "results")


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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

    def is_done(self) -> bool:
        return self.record.exists()

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
        """done, running, resumable (has a checkpoint) or not started."""
        if self.is_done():
            return "done"
        if self.is_locked():
            return "running"
        return "resumable" if self.checkpoint.exists() else "not started"

    def read_record(self) -> dict:
        return json.loads(self.record.read_text())

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
