"""The CUDA-only paths of checkpointing, device choice and DDP failure modes, shown on the CPU.

What only a GPU node does is simulated by monkeypatching: a ``torch.load`` whose
``map_location="cuda:0"`` leaves the RNG states unusable by ``torch.set_rng_state`` (as CUDA
tensors are), a ``torch.cuda`` with a given number of GPUs whose per-device RNG calls fail for a
device that is not there. DDP runs use gloo processes (tests/ddp_worker.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import stop_at_step
from test_ddp import run_ranks

from ltbench.config import resolve_config
from ltbench.distributed import DistInfo
from ltbench.errors import ConfigError
from ltbench.runner import build_data, build_method, resolve_device, run_dir_for, train
from ltbench.trainer import Trainer, TrainingInterrupted

TOY = ("toy2", "synthetic_lt", None, ["stages.*.epochs=1", "train.precision=fp32"])


@pytest.fixture
def toys():
    import toy_methods  # noqa: F401  (registers the toy methods)


class FakeGPUs:
    """``torch.cuda`` on a node with ``count`` GPUs: per-device RNG states, IndexError for a
    device index the node does not have (as CUDA's own calls fail)."""

    def __init__(self, monkeypatch, count: int) -> None:
        self.count = count
        self.states: dict[int, torch.Tensor] = {}
        self.restored: dict[int, torch.Tensor] = {}
        for module in (torch.cuda, torch.cuda.random):
            monkeypatch.setattr(module, "device_count", lambda: self.count)
            monkeypatch.setattr(module, "get_rng_state", self.get_rng_state)
            monkeypatch.setattr(module, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: self._index(device))

    def _index(self, device) -> int:
        index = torch.device(device).index if not isinstance(device, int) else device
        index = 0 if index is None else index
        if index >= self.count:
            raise IndexError(f"no GPU {index} on a node with {self.count}")
        return index

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        index = self._index(device)
        return self.states.setdefault(index, torch.full((8,), 10 + index, dtype=torch.uint8))

    def set_rng_state(self, new_state: torch.Tensor, device="cuda") -> None:
        if new_state.dtype != torch.uint8 or new_state.device.type != "cpu":
            raise TypeError("RNG state must be a torch.ByteTensor")
        self.restored[self._index(device)] = new_state


def cuda_trainer(cfg, results: Path, index: int = 0) -> Trainer:
    """A trainer that believes it runs on ``cuda:index`` (its model stays on the CPU)."""
    data = build_data(cfg)
    run = run_dir_for(cfg, results)
    run.path.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, data, build_method(cfg, data), run, torch.device("cuda", index), progress=False)


def test_resume_on_a_gpu_restores_rng_states_as_cpu_byte_tensors(tmp_path, toys, monkeypatch):
    """The issue's crash: ``torch.load(map_location=cuda)`` moved the saved RNG byte tensors to
    the GPU and ``torch.set_rng_state`` refused them; checkpoints now load on the CPU."""
    cfg = resolve_config(*TOY)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path, progress=False, on_trainer=stop_at_step(3))
    saved = torch.load(run_dir_for(cfg, tmp_path).checkpoint, weights_only=False)["rng"][0]["torch"]

    real_load = torch.load

    def load(f, map_location=None, **kwargs):
        state = real_load(f, map_location="cpu", **kwargs)
        if map_location is not None and torch.device(map_location).type == "cuda":
            for rng in state["rng"]:  # what a CUDA tensor is to set_rng_state: not a CPU ByteTensor
                rng["torch"] = rng["torch"].to(torch.int16)
        return state

    monkeypatch.setattr(torch, "load", load)
    FakeGPUs(monkeypatch, count=1)
    trainer = cuda_trainer(cfg, tmp_path)
    torch.manual_seed(12345)
    trainer._restore()
    assert torch.equal(torch.get_rng_state(), saved)
    assert trainer.state.position.batch == 3


def test_a_relaunch_with_fewer_gpus_restores_its_own_gpus_rng_state(tmp_path, toys, monkeypatch):
    """A checkpoint written by a process of a 2-GPU node holds its own device's CUDA RNG state
    only, so the same run relaunched on a 1-GPU node resumes (every visible GPU's states: the
    restore on the missing GPU 1 raised IndexError)."""
    cfg = resolve_config(*TOY)
    gpus = FakeGPUs(monkeypatch, count=2)
    cuda_trainer(cfg, tmp_path)._save()
    gpus.count, gpus.restored = 1, {}
    cuda_trainer(cfg, tmp_path)._restore()
    assert list(gpus.restored) == [0] and torch.equal(gpus.restored[0], gpus.states[0])
    state = torch.load(run_dir_for(cfg, tmp_path).checkpoint, weights_only=False)
    assert torch.equal(state["rng"][0]["cuda"], gpus.states[0])


def test_an_empty_scaler_state_is_skipped_on_resume(tmp_path, toys):
    """A checkpoint written without loss scaling (fp32: a laptop, or AMP off) has an empty
    GradScaler state; a resume with fp16 loss scaling on (a GPU node) must not load it."""
    cfg = resolve_config(*TOY)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path, progress=False, on_trainer=stop_at_step(3))
    assert torch.load(run_dir_for(cfg, tmp_path).checkpoint, weights_only=False)["scaler"] == {}

    def scaled(trainer: Trainer) -> None:  # the fp16 path's scaler, on the CPU
        trainer.amp = True
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)

    record = train(cfg, tmp_path, progress=False, on_trainer=scaled).record
    assert record["resumes"] == 1


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path, toys):
    """Rank 1 alone sees a NaN loss at step 3: both ranks stop with NonFiniteLossError (exit
    status 4) instead of rank 0 waiting in the gradient all-reduce for a rank that is gone."""
    sets = ["method.nan_at_step=2", "method.nan_rank=1", "train.dist_timeout_minutes=1"]
    statuses = run_ranks(tmp_path, method="toy_nan", preset=None, sets=sets, timeout=100)
    assert statuses == [4, 4]


@pytest.mark.parametrize("local_rank, count, expected", [(0, 1, 0), (3, 1, 0), (3, 4, 3), (5, 4, 1)])
def test_each_process_takes_local_rank_modulo_the_visible_gpus(monkeypatch, local_rank, count, expected):
    """``--gpus-per-task``: every task sees one GPU, its own device 0 (cuda:LOCAL_RANK did not exist)."""
    FakeGPUs(monkeypatch, count)
    dist = DistInfo(rank=local_rank, world_size=8, local_rank=local_rank)
    assert resolve_device("cuda", dist) == torch.device("cuda", expected)
    assert resolve_device("auto", dist) == torch.device("cuda", expected)


def test_one_named_gpu_is_refused_for_several_processes(monkeypatch):
    FakeGPUs(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # one process: its choice
    with pytest.raises(ConfigError, match=r"train.device=cuda:1 would put all 2 processes of this run on one GPU"):
        resolve_device("cuda:1", DistInfo(rank=0, world_size=2, local_rank=0))
    with pytest.raises(ConfigError, match=r"shows 2 GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.slow
def test_ltbench_run_under_torchrun_joins_its_process_group(tmp_path):
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*) make `ltbench run` one rank
    of a DDP run, not two runs that each train alone."""
    from test_ddp import _free_port

    out = tmp_path / "results"
    args = ["run", "--method", "ce", "--dataset", "synthetic_lt", "--preset", "smoke", "--quiet", "--out", str(out)]
    args += ["--set", "train.device=cpu", "--set", "data.num_classes=4"]
    code = "import sys; from ltbench.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env["OMP_NUM_THREADS"] = "1"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, *args], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(2)
    ]
    try:
        assert [p.wait(timeout=200) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    (record,) = [json.loads(p.read_text()) for p in out.rglob("run.json")]
    assert record["world_size"] == 2


def test_sync_bn_converts_batchnorm_keeping_its_parameters_and_is_refused_on_the_cpu(tmp_path, toys, monkeypatch):
    cfg = resolve_config(*TOY[:3], [*TOY[3], "train.sync_bn=true"])
    data = build_data(cfg)
    run = run_dir_for(cfg, tmp_path)
    two = DistInfo(rank=0, world_size=2, local_rank=0)
    with pytest.raises(ConfigError, match="train.sync_bn=true needs CUDA"):
        Trainer(cfg, data, build_method(cfg, data), run, torch.device("cpu"), two, progress=False)
    FakeGPUs(monkeypatch, 2)
    trainer = Trainer(cfg, data, build_method(cfg, data), run, torch.device("cuda", 0), two, progress=False)
    before = dict(trainer.method.named_parameters())
    trainer._batch_norm_across_ranks("train", 16)
    bns = [m for m in trainer.method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, torch.nn.SyncBatchNorm) for m in bns)
    after = dict(trainer.method.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
