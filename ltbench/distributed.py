"""torch.distributed helpers: who am I, joining the process group, and summing across ranks.

A single process is world size 1 and every helper is a no-op, so the trainer has one code path.
Inside a Slurm (or submitit local) job with several tasks, :func:`init_from_job` takes ranks and
the rendezvous from submitit's ``TorchDistributedEnvironment``: one task per GPU, every task
computes the same master address and port, so no extra launcher (torchrun) is needed.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def slurm_cpus_per_task() -> int | None:
    """The CPUs Slurm allocated to each task of this job; None outside a Slurm job."""
    if os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    if os.environ.get("SLURM_CPUS_ON_NODE"):
        return max(1, int(os.environ["SLURM_CPUS_ON_NODE"]) // int(os.environ.get("SLURM_NTASKS_PER_NODE") or 1))
    return None


def init_from_env(backend: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group described by the standard env variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT: torchrun's, or submitit's exported by
    :func:`init_from_job`); world size 1 when they are absent. ``timeout_minutes``
    (``train.dist_timeout_minutes``) bounds how long a collective waits for a rank that is gone,
    so a failed rank ends the run instead of hanging it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
    return DistInfo(rank, world, local)


def init_from_job(backend: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group of the current submitit job (Slurm or local executor).

    submitit's ``TorchDistributedEnvironment`` exports rank, local rank, world size and the
    rendezvous (the job's first node, a port derived from the job id, so every task of a job, and
    the job again after a requeue, meets on the same one). A one-node job meets on the loopback
    address, which works even where the node's hostname does not resolve to itself. The runner
    picks GPU ``LOCAL_RANK % visible GPUs`` itself, so ``CUDA_VISIBLE_DEVICES`` is left alone.
    Outside a submitit job this falls back to the standard env variables (:func:`init_from_env`).
    """
    import submitit

    try:
        env = submitit.helpers.TorchDistributedEnvironment()
    except RuntimeError:  # not inside a submitit job
        return init_from_env(backend, timeout_minutes)
    if env.world_size <= 1:  # a one-task job is one process, whatever the inherited environment says
        return DistInfo()
    if env.local_world_size == env.world_size:  # one node
        env.master_addr = "127.0.0.1"
    env.export(set_cuda_visible_devices=False, overwrite=True)
    return init_from_env(backend, timeout_minutes)


def shutdown(info: DistInfo) -> None:
    """Leave the process group joined by :func:`init_from_env` (no-op for one process)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flags: list[bool], info: DistInfo, device: torch.device) -> list[bool]:
    """Each flag OR-ed over all ranks, so that every rank takes the same branch before a
    collective (a checkpoint, a stop) even when only one rank saw the reason for it."""
    if not info.enabled:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_tensors(tensors: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """Sum each tensor over all ranks (exact for integer counts)."""
    if not info.enabled:
        return tensors
    for t in tensors.values():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return tensors


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. Without SyncBatchNorm each
    rank updates its own from its share of the batch, and DDP re-broadcasts them only at the next
    training forward: an evaluation right after training would score each rank's shard with a
    different model, not the one the checkpoint (rank 0's) holds."""
    if not info.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
