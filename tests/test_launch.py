"""The launcher without a cluster: cluster options and profiles, the sbatch file, array splitting,
the sweep manifest, run states from scheduler answers, the debug launcher, and the job's
signal -> checkpoint -> requeue hand-over (tests/test_slurm_cluster.py does it on a real cluster)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from submitit.core.utils import JobPaths, cloudpickle_dump

import ltbench.cluster.sweep as sweep_mod
from ltbench.cluster.job import TrainJob
from ltbench.cluster.slurm import (
    ClusterConfig,
    cluster_config,
    parse_max_array_size,
    parse_sacct,
    parse_time,
    slurm_parameters,
    split_array,
    submission_preview,
)
from ltbench.cluster.sweep import Sweep, expand_grid, parse_seeds, status
from ltbench.config import config_from_dict, resolve_config
from ltbench.errors import ConfigError, LTBenchError
from ltbench.records import RECORD_KEYS
from ltbench.runner import final_weights, run_dir_for, train

# a few hundred images: a run takes about a second
TINY = ["data.img_max=20", "data.val_per_class=2", "data.test_per_class=4"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Training tests here use one thread: on a shared, loaded machine torch's default of one
    thread per core makes them crawl (as it would a Slurm job; see distributed.slurm_cpus_per_task)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- cluster options


@pytest.mark.parametrize(
    "text, minutes",
    [
        ("90", 90),
        (90, 90),
        ("1:30", 2),
        ("2:00:00", 120),
        ("0:30", 1),
        ("1-0", 1440),
        ("1-2:30", 1590),
        ("1-00:00:01", 1441),
    ],
)
def test_parse_time_reads_slurm_time_formats(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "1h", "0", "1:2:3:4", "-5"])
def test_parse_time_rejects_other_text(text):
    with pytest.raises(ConfigError):
        parse_time(text)


def test_profile_then_flags(tmp_path):
    profile = tmp_path / "cluster.toml"
    profile.write_text(
        'partition = "gpu"\ntime = "2:00:00"\ngpus_per_node = 4\nsetup = ["module load cuda"]\n'
        '[sbatch]\nqos = "high"\nconstraint = "a100"\n'
    )
    c = cluster_config(
        profile, time="30", gpus_per_node=2, sbatch={"qos": "low"}, setup=["source venv"], partition=None
    )
    assert (c.partition, c.time, c.gpus_per_node, c.tasks, c.world_size) == ("gpu", 30, 2, 2, 2)
    assert c.sbatch == {"qos": "low", "constraint": "a100"}  # merged, flags win
    assert c.setup == ["module load cuda", "source venv"]  # appended


def test_profile_unknown_key_lists_the_valid_ones(tmp_path):
    profile = tmp_path / "cluster.toml"
    profile.write_text('partitoin = "gpu"\n')
    with pytest.raises(ConfigError, match="partitoin.*valid options: partition, account, time"):
        cluster_config(profile)


@pytest.mark.parametrize(
    "sbatch, message",
    [
        ({"time": "10"}, "--time"),
        ({"gpus_per_node": 2}, "--gpus-per-node"),
        ({"array": "0-3"}, "submitit"),
    ],
)
def test_sbatch_extras_cannot_override_managed_options(sbatch, message):
    with pytest.raises(ConfigError, match=message):
        cluster_config(None, sbatch=sbatch)


@pytest.mark.parametrize("flags", [{"nodes": 0}, {"gpus_per_node": -1}, {"mem": "lots"}, {"nodes": "two"}])
def test_bad_cluster_values(flags):
    with pytest.raises(ConfigError):
        cluster_config(None, **flags)


def test_cluster_flags_of_the_command_line(monkeypatch):
    from ltbench.cli import build_parser
    from ltbench.cli.sweep import cluster_from_args

    monkeypatch.delenv("LTBENCH_CLUSTER_PROFILE", raising=False)
    parse = build_parser().parse_args
    args = parse(
        [
            "sweep",
            "--sbatch",
            "qos=high",
            "--sbatch",
            "exclusive",
            "--time",
            "2:00:00",
            "--gpus-per-node",
            "2",
            "--setup",
            "module load cuda",
        ]
    )
    c = cluster_from_args(args)
    assert (c.sbatch, c.time, c.tasks, c.setup) == ({"qos": "high", "exclusive": True}, 120, 2, ["module load cuda"])
    # a relaunch keeps the sweep's options and changes only those given
    relaunched = cluster_from_args(parse(["sweep", "--time", "30"]), base=c, profile_from_env=False)
    assert (relaunched.time, relaunched.gpus_per_node, relaunched.sbatch) == (30, 2, c.sbatch)


def test_submission_of_a_multi_gpu_array():
    """Recorded dry-run preview: every parameter follows from the options (4 GPUs -> 4 tasks per
    node, one DDP rank each, a dying rank kills the step; the array runs at most 3 tasks at once;
    USR2 120 s before the limit). tests/test_slurm_cluster.py checks the sbatch file submitit
    writes from such parameters on a real cluster."""
    cluster = cluster_config(
        None,
        partition="gpu",
        account="proj",
        time="1-00:00:00",
        gpus_per_node=4,
        cpus_per_task=8,
        mem="64G",
        array_parallelism=3,
        sbatch={"qos": "high", "exclusive": True},
        setup=["module load cuda/12.1"],
    )
    assert (
        submission_preview(cluster, "/shared/sweeps/s/jobs", array_size=10)
        == """\
submitit SlurmExecutor parameters (submitit writes each as an #SBATCH line):
  account = 'proj'
  additional_parameters = {'qos': 'high', 'exclusive': True}
  array_parallelism = 3
  cpus_per_task = 8
  gpus_per_node = 4
  job_name = 'ltbench'
  mem = '64G'
  nodes = 1
  ntasks_per_node = 4
  partition = 'gpu'
  setup = ['module load cuda/12.1']
  signal_delay_s = 120
  srun_args = ['--kill-on-bad-exit=1']
  time = 1440
job array: 10 tasks, at most 3 at once, one per run
logs: /shared/sweeps/s/jobs/<array id>_<index>_<task>_log.out and .err
sbatch file, written on submission: /shared/sweeps/s/jobs/<array id>_submission.sh
"""
    )
    single = submission_preview(ClusterConfig(time=5), "/jobs")
    assert "job array" not in single and "logs: /jobs/<job id>_<task>_log.out" in single


def test_gpu_jobs_ask_for_cpus_per_gpu_unless_told():
    # a GPU job left to the partition's default (often 1 CPU) starves the GPU: DEFAULT_CPUS_PER_GPU per task
    assert slurm_parameters(ClusterConfig(time=5, gpus_per_node=4))["cpus_per_task"] == 8
    assert slurm_parameters(ClusterConfig(time=5, gpus_per_node=4, tasks_per_node=1))["cpus_per_task"] == 32
    assert slurm_parameters(ClusterConfig(time=5, gpus_per_node=2, cpus_per_task=3))["cpus_per_task"] == 3
    assert "cpus_per_task" not in slurm_parameters(ClusterConfig(time=5))  # CPU jobs: the partition's default


def test_single_process_job_parameters():
    params = slurm_parameters(ClusterConfig(time=5))
    # one task, no GPU request, no srun options; USR2 120 s before the limit, or half-way for short jobs
    assert params == {"job_name": "ltbench", "time": 5, "nodes": 1, "ntasks_per_node": 1, "signal_delay_s": 120}
    assert slurm_parameters(ClusterConfig(time=2))["signal_delay_s"] == 60


# ----------------------------------------------------------------------------- arrays


def test_split_array_by_max_array_size():
    assert [len(c) for c in split_array(list(range(2500)), 1001)] == [1001, 1001, 498]
    assert split_array(list(range(1001)), 1001) == [list(range(1001))]
    assert split_array([], 1001) == []


def test_max_array_size_from_scontrol():
    text = "Configuration data as of 2024-01-01\nMaxArraySize            = 40001\nMaxJobCount = 10000\n"
    assert parse_max_array_size(text) == 40001
    assert parse_max_array_size("MaxJobCount = 10000\n") == 1001  # Slurm's default


def test_sweep_is_split_into_arrays_above_max_array_size(results, monkeypatch):
    arrays = []

    class FakeSlurm:  # records each submit_array call; job ids as Slurm gives them
        def submit_array(self, fns):
            arrays.append(fns)
            return [SimpleNamespace(job_id=f"{100 + len(arrays)}_{i}") for i in range(len(fns))]

    monkeypatch.setattr(sweep_mod, "make_executor", lambda launcher, folder, cluster: FakeSlurm())
    monkeypatch.setattr(sweep_mod, "max_array_size", lambda: 3)
    configs = expand_grid(["ce"], ["synthetic_lt"], range(7), "smoke", TINY)
    sweep = Sweep.open(configs, "slurm", ClusterConfig(), results)
    assert sweep_mod.submit(sweep) == [c.run_id() for c in configs]
    assert [len(a) for a in arrays] == [3, 3, 1]
    assert [job.config for a in arrays for job in a] == [c.to_dict() for c in configs]
    manifest = json.loads(sweep.manifest_path.read_text())
    assert [manifest["runs"][c.run_id()]["jobs"] for c in configs] == [
        ["101_0"],
        ["101_1"],
        ["101_2"],
        ["102_0"],
        ["102_1"],
        ["102_2"],
        ["103_0"],
    ]

    # the same grid again: the same sweep; queued runs are not submitted twice
    monkeypatch.setattr(sweep_mod, "slurm_states", lambda ids: {j: "PENDING" for j in ids})
    again = Sweep.open(configs, "slurm", ClusterConfig(), results)
    assert again.path == sweep.path and sweep_mod.submit(again) == [] and len(arrays) == 3


# ----------------------------------------------------------------------------- grid and manifest


def test_parse_seeds():
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]
    assert parse_seeds("3") == [3]
    assert parse_seeds("1,1,0-1") == [1, 0]
    for bad in ("", "a", "3-1"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_grid_keeps_each_run_once_and_sweep_name_follows_the_grid(results):
    configs = expand_grid(["ce", "ce"], ["synthetic_lt"], [0, 1], "smoke", TINY)
    assert [c.train.seed for c in configs] == [0, 1]
    a = Sweep.open(configs, "local", ClusterConfig(), results)
    b = Sweep.open(list(reversed(configs)), "local", ClusterConfig(), results)
    assert a.path == b.path and a.path.parent == results.resolve() / "sweeps"
    entry = a.runs[configs[1].run_id()]
    assert (entry["method"], entry["dataset"], entry["preset"], entry["seed"], entry["jobs"]) == (
        "ce",
        "synthetic_lt",
        "smoke",
        1,
        [],
    )
    assert config_from_dict(entry["config"]).run_id() == configs[1].run_id()  # the job's config


def test_a_sweep_keeps_its_launcher(results):
    configs = expand_grid(["ce"], ["synthetic_lt"], [0], "smoke", TINY)
    sweep = Sweep.open(configs, "slurm", ClusterConfig(), results)
    sweep.runs[configs[0].run_id()]["jobs"].append("7_0")
    sweep.save()
    with pytest.raises(ConfigError, match="launched with --launcher slurm"):
        Sweep.open(configs, "local", ClusterConfig(), results)


def test_load_requires_a_manifest(tmp_path):
    with pytest.raises(LTBenchError, match="no sweep.json"):
        Sweep.load(tmp_path)


# ----------------------------------------------------------------------------- states


def test_parse_sacct_with_array_ranges():
    text = "JobID|State\n12_0|COMPLETED\n12_1|CANCELLED by 0\n12_[2-3%2]|PENDING\n13|RUNNING\n13.batch|RUNNING\n"
    assert parse_sacct(text, ["12_0", "12_1", "12_2", "12_3", "12_4", "13"]) == {
        "12_0": "COMPLETED",
        "12_1": "CANCELLED",
        "12_2": "PENDING",
        "12_3": "PENDING",
        "13": "RUNNING",
    }


def test_status_of_each_kind_of_run(results, monkeypatch):
    configs = expand_grid(["ce"], ["synthetic_lt"], range(8), "smoke", TINY)
    sweep = Sweep.open(configs, "slurm", ClusterConfig(), results)
    ids = [c.run_id() for c in configs]
    for i, rid in enumerate(ids[:7]):
        sweep.runs[rid]["jobs"] = [f"5_{i}"] if i else ["4_0", "5_0"]
    sweep.run_dir(ids[0]).path.mkdir(parents=True)
    # a readable run.json: done, whatever the scheduler says (an empty "{}" is a damaged record, not done)
    record = {**dict.fromkeys(RECORD_KEYS, 0), "train_counts": [], "splits": {}}  # the layout records.py reads
    sweep.run_dir(ids[0]).record.write_text(json.dumps(record))
    sweep.jobs_folder.mkdir(parents=True)
    cloudpickle_dump(
        ("error", "Traceback (most recent call last):\n  ...\nValueError: boom"),
        JobPaths(sweep.jobs_folder, "5_4", 0).result_pickle,
    )
    JobPaths(sweep.jobs_folder, "5_5", 0).stderr.write_text(
        "train epoch 1/2\nslurmstepd: error: *** JOB 5 CANCELLED DUE TO TIME LIMIT ***\n"
    )
    answers = {
        "5_0": "FAILED",
        "5_1": "PENDING",
        "5_2": "RUNNING",
        "5_3": "REQUEUED",
        "5_4": "FAILED",
        "5_5": "TIMEOUT",
    }  # 5_6 is not in accounting
    asked = []
    monkeypatch.setattr(sweep_mod, "slurm_states", lambda jobs: asked.append(sorted(jobs)) or answers)
    got = {s.run_id: s for s in status(sweep)}
    assert asked == [["5_1", "5_2", "5_3", "5_4", "5_5", "5_6"]]  # finished runs are not asked about
    assert [got[r].state for r in ids] == [
        "done",
        "pending",
        "running",
        "pending",
        "failed",
        "failed",
        "unknown",
        "not submitted",
    ]
    assert got[ids[0]].job == "5_0" and got[ids[3]].detail == "REQUEUED"
    assert (
        got[ids[4]].detail == "job 5_4 ended FAILED without finishing the run\n"
        "Traceback (most recent call last):\n  ...\nValueError: boom"
    )
    assert got[ids[5]].detail.endswith("CANCELLED DUE TO TIME LIMIT ***")
    assert got[ids[5]].detail.startswith("job 5_5 ended TIMEOUT")


# ----------------------------------------------------------------------------- running jobs here


def test_debug_launcher_runs_the_sweep_in_process(cli, results):
    code, out, _ = cli(
        "sweep",
        "--methods",
        "ce",
        "--datasets",
        "synthetic_lt",
        "--seeds",
        "0",
        "--preset",
        "smoke",
        *[a for s in TINY for a in ("--set", s)],
        "--launcher",
        "debug",
    )
    assert code == 0 and "1 of 1 runs submitted" in out and "1 done" in out
    cfg = resolve_config("ce", "synthetic_lt", "smoke", TINY, 0)
    assert run_dir_for(cfg, results).is_done()
    code, out, _ = cli("status")
    assert code == 0 and cfg.run_id() in out and "1 done" in out


@pytest.mark.slow
def test_train_job_checkpoints_on_the_signal_then_lets_submitit_requeue(results, tmp_path):
    """USR2 -> the trainer stops at the next optimizer step after a checkpoint -> only then is
    submitit's handler called (it requeues and exits); the resumed job ends like a straight run."""
    cfg = resolve_config("ce", "synthetic_lt", "smoke", ["train.checkpoint_steps=2"], 0)
    run = run_dir_for(cfg, results)
    handed_over = []

    def submitit_handler(signum, frame):  # stands in for submitit's checkpoint-and-requeue
        handed_over.append(torch.load(run.checkpoint, weights_only=False)["state"]["position"])
        raise SystemExit(-1)

    def signal_after_first_checkpoint():
        while not run.checkpoint.exists():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        threading.Thread(target=signal_after_first_checkpoint, daemon=True).start()
        with pytest.raises(SystemExit):
            TrainJob(cfg.to_dict(), str(results))()
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # the job put it back
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert len(handed_over) == 1 and not run.is_done()
    stopped = handed_over[0]
    assert stopped["stage"] == 0 and stopped["batch"] > 0  # mid-epoch

    assert TrainJob(cfg.to_dict(), str(results))() == {
        "run_id": cfg.run_id(),
        "run_dir": str(run.path),
        "already_done": False,
    }
    record = run.read_record()
    reference = train(cfg, tmp_path / "reference", progress=False)
    assert record["resumes"] == 1 and reference.record["resumes"] == 0
    assert record["splits"] == reference.record["splits"]
    resumed, straight = final_weights(run), final_weights(reference.run)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_a_job_whose_run_another_process_is_training_waits_for_it(results, caplog):
    """Two overlapping sweeps (or a sweep and an `ltbench run`) that share a run: the second job
    waits on the run's lock and reports the run the first one finished, instead of failing."""
    cfg = resolve_config("ce", "synthetic_lt", "smoke", TINY, 0)
    run = run_dir_for(cfg, results)
    holding, release = threading.Event(), threading.Event()

    def hold(trainer):  # called inside the run's lock, before training
        holding.set()
        release.wait(30)

    other = threading.Thread(target=train, args=(cfg, results), kwargs={"progress": False, "on_trainer": hold})
    other.start()
    holding.wait(30)
    threading.Timer(0.5, release.set).start()
    with caplog.at_level("INFO", logger="ltbench"):
        answer = TrainJob(cfg.to_dict(), str(results))()
    other.join(60)
    assert "being trained by another process: waiting for it" in caplog.text
    assert answer == {"run_id": cfg.run_id(), "run_dir": str(run.path), "already_done": True}  # trained once
    assert run.is_done() and run.read_record()["resumes"] == 0


def test_a_run_that_holds_its_lock_is_running_while_accounting_still_says_pending(results, monkeypatch):
    # slurmdbd can lag slurmctld: sacct says PENDING for a job whose run is already training
    configs = expand_grid(["ce"], ["synthetic_lt"], range(2), "smoke", TINY)
    sweep = Sweep.open(configs, "slurm", ClusterConfig(), results)
    ids = [c.run_id() for c in configs]
    for i, rid in enumerate(ids):
        sweep.runs[rid]["jobs"] = [f"7_{i}"]
    monkeypatch.setattr(sweep_mod, "slurm_states", lambda jobs: {"7_0": "PENDING", "7_1": "PENDING"})
    with sweep.run_dir(ids[0]).lock():  # run 0 is training (this process holds its lock)
        got = {s.run_id: s for s in status(sweep)}
    assert [got[r].state for r in ids] == ["running", "pending"]
    assert got[ids[0]].detail == "accounting still says PENDING"
