"""One DDP rank for tests/test_ddp.py (run as a script, like a torchrun worker).

Usage: ``python ddp_worker.py SPEC_JSON`` with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set.
SPEC: method, dataset, preset, sets, results, and optionally ``stop_rank``: that rank alone asks
its trainer to stop (as a preemption signal would), the others do not. Exit status 3 means the
run stopped with :class:`~ltbench.trainer.TrainingInterrupted` after its checkpoint, 4 that it
stopped with :class:`~ltbench.errors.NonFiniteLossError`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_methods  # noqa: E402, F401  (the tests' toy methods are available to the ranks too)

from ltbench.config import resolve_config
from ltbench.distributed import init_from_env, shutdown
from ltbench.errors import NonFiniteLossError
from ltbench.runner import train
from ltbench.trainer import TrainingInterrupted


def main() -> int:
    spec = json.loads(sys.argv[1])
    cfg = resolve_config(spec["method"], spec["dataset"], spec["preset"], spec["sets"])
    dist = init_from_env("gloo", cfg.train.dist_timeout_minutes)
    stop_here = dist.rank == spec.get("stop_rank", -1)
    try:
        train(
            cfg,
            spec["results"],
            progress=False,
            dist=dist,
            on_trainer=(lambda trainer: trainer.request_stop()) if stop_here else None,
        )
    except TrainingInterrupted:
        return 3
    except NonFiniteLossError:
        return 4
    finally:
        shutdown(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
