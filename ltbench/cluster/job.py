"""The job that trains one run on a cluster node: a submitit ``Checkpointable``.

It carries only the resolved config (as a dict) and the results root, so the pickle is small and
the run directory follows from the run id wherever and however often the job starts. Each start
trains, resumes or reports the run finished (:func:`ltbench.runner.train`).

Preemption and time limits: Slurm (or the local executor) sends submitit's signal (USR2) some
time before it kills the job. Checkpointing inside the signal handler would save a half-done
optimizer step, so the job takes the signal itself and asks the trainer to stop; the trainer
writes its checkpoint at the next optimizer step boundary and raises ``TrainingInterrupted``;
only then does the job hand over to submitit's own handler, which calls :meth:`checkpoint`
(resubmit this same job), requeues it with ``scontrol requeue`` and exits. The requeued job
resumes mid-stage from that checkpoint. The trainer's periodic checkpoints
(``train.checkpoint_minutes``) cover the failures that send no signal (node loss, SIGKILL).
"""

from __future__ import annotations

import logging
import signal
import sys
import types

import submitit
import torch

from ..config import config_from_dict
from ..distributed import any_rank, init_from_job, shutdown, slurm_cpus_per_task
from ..runner import ensure_trained, resolve_device, run_dir_for, train
from ..trainer import Trainer, TrainingInterrupted

log = logging.getLogger("ltbench")


class _StopOnSignal:
    """Routes submitit's preemption/timeout signal to ``Trainer.request_stop`` and, once the
    checkpoint is written, to submitit's checkpoint-and-requeue handler."""

    def __init__(self) -> None:
        self.signum = signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]
        self.submitit_handler = signal.getsignal(self.signum)
        self.trainer: Trainer | None = None
        self.received = False
        signal.signal(self.signum, self._on_signal)

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        log.warning("received %s: stopping after a checkpoint at the next optimizer step", self.signum.name)
        self.received = True
        if self.trainer is not None:
            self.trainer.request_stop()

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer
        if self.received:  # the signal came while the data and model were being built
            trainer.request_stop()

    def hand_over(self) -> None:
        """Let submitit checkpoint (:meth:`TrainJob.checkpoint`) and requeue the job; this exits
        the process, or raises when submitit will not requeue (too many time-outs)."""
        if callable(self.submitit_handler):
            self.submitit_handler(self.signum, None)

    def restore(self) -> None:
        signal.signal(self.signum, self.submitit_handler)


class TrainJob(submitit.helpers.Checkpointable):
    """Train (or resume, or report finished) one run; requeued on preemption and time-outs.

    ``checkpoint()`` is submitit's default, which resubmits this same object: the config and the
    results root are all a requeued job needs, the training state is in the run's checkpoint.
    """

    def __init__(self, config: dict, results: str, threads: int | None = None) -> None:
        self.config = config
        self.results = results
        self.threads = threads  # torch threads per process; None: Slurm's CPUs per task, else torch's default

    def __call__(self) -> dict:
        if not logging.getLogger().handlers:  # a fresh job process: log lines go to the job's log
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        threads = self.threads or slurm_cpus_per_task()
        if threads:  # torch would start a thread per core of the node, which other jobs share
            torch.set_num_threads(threads)
        cfg = config_from_dict(self.config)
        dist = init_from_job("gloo" if cfg.train.device == "cpu" else None, cfg.train.dist_timeout_minutes)
        relay = _StopOnSignal()
        try:
            run = run_dir_for(cfg, self.results)
            # one answer for every rank, taken before rank 0 locks the run in train(): a rank that
            # looked after rank 0 took the lock would wait for its own job instead of joining it
            busy = not run.is_done() and run.is_locked()
            if any_rank([busy], dist, resolve_device(cfg.train.device, dist))[0]:
                # the same run in an overlapping sweep or an `ltbench run`: wait for that process
                # and take its result (or train the run if it stops unfinished), rather than fail
                log.info("%s is being trained by another process: waiting for it", run.path)
                result = ensure_trained(cfg, self.results, dist, progress=True)
            else:
                result = train(cfg, self.results, progress=True, dist=dist, on_trainer=relay.attach)
        except TrainingInterrupted:
            if not dist.is_main:  # rank 0 requeues the whole job
                return {"run_id": cfg.run_id(), "interrupted": True}
            relay.hand_over()
            raise  # not a submitit job (debug executor, direct call): nothing requeues it
        finally:
            relay.restore()
            shutdown(dist)
        return {"run_id": cfg.run_id(), "run_dir": str(result.run.path), "already_done": result.already_done}
