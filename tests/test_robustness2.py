"""Robustness, round 2 (issue 26): results bound to image content, configurations checked before
anything is written, clear one-line errors, logs as exact as results after a resume."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import fmnist_available
from test_robustness import FOLDER_RUN, folder_tree, only_run

from ltbench.errors import ConfigError
from ltbench.records import RunDir

SYNTH = ("run", "--method", "ce", "--dataset", "synthetic_lt", "--preset", "smoke", "--quiet")


# ----------------------------------------------------------------------------- 1: bound to image content


def test_other_images_under_the_same_split_files_are_refused_and_a_copy_matches(tmp_path, results, cli):
    a = folder_tree(tmp_path / "a")
    assert cli(*FOLDER_RUN, "--root", str(a))[0] == 0
    record = only_run(results).read_record()
    copy = Path(shutil.copytree(a, tmp_path / "copy"))  # the same data on another disk: the same run
    code, out, err = cli(*FOLDER_RUN, "--root", str(copy))
    assert code == 0 and "already finished" in out, err
    changed = Path(shutil.copytree(a, tmp_path / "changed"))
    image = changed / "t/c1/0.jpg"
    raw = bytearray(image.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, same split files: only the bytes differ
    image.write_bytes(bytes(raw))
    code, out, err = cli(*FOLDER_RUN, "--root", str(changed))
    assert code == 2 and "already finished" not in out
    assert "trained on other data: image content" in err and f"(root {a})" in err and "--force" in err
    assert only_run(results).read_record() == record


def test_a_checkpoint_is_not_resumed_on_other_images(tmp_path):
    from ltbench.runner import StaleRunError, check_data

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.data.write_text(json.dumps({"fingerprint": "aaaa", "content": "c1", "root": "/old"}))
    run.checkpoint.write_bytes(b"")
    with pytest.raises(StaleRunError, match=r"image content c1 \(root /old\), but the data now has content c2"):
        check_data(run, SimpleNamespace(fingerprint="aaaa", details={"content": "c2", "root": "/new"}))
    check_data(run, SimpleNamespace(fingerprint="aaaa", details={"content": "c1", "root": "/elsewhere"}))


def test_the_content_digest_reads_a_sample_not_every_file(tmp_path, monkeypatch):
    from ltbench import preflight
    from ltbench.datasets.folder_lt import FolderLT

    root = folder_tree(tmp_path)
    ds = FolderLT()
    params = ds.Params(root=str(root))
    monkeypatch.setattr(preflight, "CONTENT_SAMPLE", 3)
    read: list[str] = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or original(self))
    digest = preflight.check_files(ds.build(params), "folder_lt")
    assert len(read) == 3 and preflight.check_files(ds.build(params), "folder_lt") == digest


# ----------------------------------------------------------------------------- 2: one working size


def test_in_memory_splits_at_another_size_than_the_working_one_are_refused(results):
    from ltbench.config import resolve_config
    from ltbench.preflight import check_recipes
    from ltbench.runner import build_data

    cfg = resolve_config("ce", "synthetic_lt", "smoke")
    data = build_data(cfg)
    data.image_size = 8  # what data.image_size=8 does to a dataset stored at 16 px
    with pytest.raises(ConfigError, match=r"eval.augment=default \(on val\) gives the val images at 16x16 px"):
        check_recipes(cfg, data)
    data.image_size = 32
    cfg.stages["train"].augment = ["rrc_flip"]
    cfg.eval.augment = "resize_center_crop"
    check_recipes(cfg, data)  # every split at 32 px


@pytest.mark.skipif(not fmnist_available(), reason="Fashion-MNIST files not installed")
@pytest.mark.parametrize("sets", [["data.image_size=7"], ["data.image_size=56", "stages.train.augment=rrc_flip"]])
def test_fmnist_at_another_size_is_refused_before_anything_is_written(cli, results, sets):
    args = [a for s in sets for a in ("--set", s)]
    code, _, err = cli("run", "--method", "ce", "--dataset", "fmnist_lt", "--preset", "smoke", "--quiet", *args)
    assert code == 2 and "every split must be seen at the working size" in err and "Traceback" not in err
    assert not (results / "runs").exists()


# ----------------------------------------------------------------------------- 3: classes without test images


def test_a_class_without_test_images_is_said_by_verify_and_run(tmp_path, cli, results, caplog):
    root = folder_tree(tmp_path, test_counts=(2, 2, 0, 2, 2))
    code, out, _ = cli("data", "verify", "--dataset", "folder_lt", "--root", str(root))
    assert "warning: 1 of 5 classes have no test image (classes 2)" in out and "4 classes only" in out
    caplog.set_level(logging.WARNING, logger="ltbench")
    assert cli(*FOLDER_RUN, "--root", str(root))[0] == 0
    assert any("1 of 5 classes have no test image (classes 2)" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- 4, 5: checked before anything


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("stages.train.optim.name=sgdd", "stages.train.optim.name: unknown optimizer 'sgdd'. Did you mean 'sgd'?"),
        ("stages.train.schedule.name=cosin", "unknown schedule 'cosin'. Did you mean 'cosine'?"),
        ("stages.train.sampler=clas_balanced", "unknown sampler 'clas_balanced'. Did you mean 'class_balanced'?"),
        ("model.arch=resnet33", "model.arch: unknown model 'resnet33'. Did you mean 'resnet32'?"),
        ("stages.train.augment=rrc_flp", "stages.train.augment: unknown augmentation recipe 'rrc_flp'"),
        ("stages.train.optim.sam_rho_milestones=[1,2]", "sam_rho_milestones=[1, 2] and stages.train.optim.sam_rho"),
        ("stages.train.optim.lr=inf", "stages.train.optim.lr=inf is out of range: it must be finite and >= 0"),
        ("stages.train.optim.lr=1e30", "stages.train.optim.lr=1e+30 is out of range: it must be >= 0 and <= 100"),
        ("stages.train.optim.sam_rho=-1", "stages.train.optim.sam_rho=-1.0 is out of range: it must be >= 0"),
        ("stages.train.optim.sam_rho_values=[-0.5]", "sam_rho_values=[-0.5] is out of range"),
        ("data.val_per_class=0", "eval.selection=best-val needs a val split"),
    ],
)
@pytest.mark.parametrize("dry", [False, True])
def test_bad_names_and_values_are_refused_before_anything_is_written(cli, results, assignment, message, dry):
    sets = ["--set", assignment] + (["--set", "eval.selection=best-val"] if "val_per_class" in assignment else [])
    code, out, err = cli(*SYNTH, *sets, *(["--dry-run"] if dry else []))
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (results / "runs").exists()


def test_a_method_without_options_says_so(cli, results):
    code, _, err = cli(*SYNTH, "--set", "method.tau=1")
    assert code == 2 and "unknown config key 'method.tau': there are no keys under method" in err


def test_a_loss_that_is_not_finite_before_any_checkpoint_claims_no_checkpoint(cli, results, toys):
    code, _, err = cli("run", "--method", "toy_nan", "--dataset", "synthetic_lt", "--quiet")
    assert code == 2 and "loss is nan" in err
    assert "no checkpoint had been written yet" in err and "last good checkpoint" not in err


# ----------------------------------------------------------------------------- 6: schedules cut short


def test_a_schedule_cut_short_is_said_in_dry_run_and_at_the_start(cli, results, caplog):
    code, _, err = cli(
        "run", "--method", "ce", "--dataset", "synthetic_lt", "--dry-run", "--set", "stages.train.epochs=3"
    )
    assert code == 0
    assert "warning: stages.train.schedule.warmup_epochs=5 with stages.train.epochs=3: the warmup never ends" in err
    assert "stages.train.schedule.milestones [160, 180] are never reached" in err
    code, _, err = cli(*SYNTH, "--dry-run")
    assert "warning" not in err  # smoke: cosine without warmup
    caplog.set_level(logging.WARNING, logger="ltbench")
    sets = ["stages.train.epochs=1", "stages.train.schedule.name=step", "stages.train.schedule.milestones=[0,1]"]
    assert cli(*SYNTH, *[a for s in sets for a in ("--set", s)])[0] == 0
    assert any("stages.train.schedule.milestones [1] are never reached" in r.getMessage() for r in caplog.records)


@pytest.fixture
def toys():
    import toy_methods

    return toy_methods


# ----------------------------------------------------------------------------- 11: logs as exact as results

EXACT = (
    "--set",
    "stages.train.epochs=2",
    "--set",
    "train.checkpoint_minutes=60",
    "--set",
    "train.log_every=3",
    "--set",
    "eval.every=1",
)


def _logs(run: RunDir) -> tuple[str, list[dict]]:
    return run.steps.read_text(), run.read_metrics()


@pytest.fixture
def uninterrupted(tmp_path_factory, cli, toys, monkeypatch):
    """steps.csv and metrics.jsonl of the toy run trained in one go (2 epochs of 13 steps)."""
    root = tmp_path_factory.mktemp("once")
    monkeypatch.setenv("LTBENCH_RESULTS", str(root))
    code, _, err = cli(*TOY, *EXACT)
    assert code == 0, err
    return _logs(only_run(root, "synthetic_lt", "toy_linear"))


def _stop_at(monkeypatch, step: int, how: str) -> None:
    """At the ``step``-th optimizer step: ask for a stop (Ctrl-C) or die at once after the step's
    rows were written (kill -9, with the checkpoint of ``train.checkpoint_steps`` before it)."""
    from ltbench.trainer import Trainer

    original, calls = Trainer._maybe_checkpoint, [0]

    def stop(self, s):
        calls[0] += 1
        if calls[0] == step:
            if how == "ctrl-c":
                self.request_stop()
            else:
                raise SystemExit(137)
        original(self, s)

    monkeypatch.setattr(Trainer, "_maybe_checkpoint", stop)


@pytest.mark.parametrize(
    "how, extra",
    [
        ("ctrl-c", ()),  # a checkpoint between two rows of steps.csv
        ("kill", ("--set", "train.checkpoint_steps=4")),  # rows after the checkpoint are redone
        ("kill", ()),  # no checkpoint yet: the restart redoes everything
        ("kill", ("--set", "train.checkpoint_steps=17")),  # mid-epoch 2, after epoch 1's evaluation
    ],
)
def test_steps_csv_and_metrics_jsonl_equal_an_uninterrupted_runs_after_a_resume(
    results, cli, toys, monkeypatch, uninterrupted, how, extra
):
    monkeypatch.setenv("LTBENCH_RESULTS", str(results))
    _stop_at(monkeypatch, 20 if "train.checkpoint_steps=17" in extra else 5, how)
    try:
        code = cli(*TOY, *EXACT, *extra)[0]
    except SystemExit:
        code = 137
    assert code in (130, 137)
    monkeypatch.undo()
    monkeypatch.setenv("LTBENCH_RESULTS", str(results))
    code, _, err = cli(*TOY, *EXACT, *extra)
    assert code == 0, err
    steps, metrics = _logs(only_run(results, "synthetic_lt", "toy_linear"))
    assert steps == uninterrupted[0]
    assert metrics == uninterrupted[1]


TOY = ("run", "--method", "toy_linear", "--dataset", "synthetic_lt", "--quiet", "--set", "train.device=cpu")


# ----------------------------------------------------------------------------- 10: one clear line each

STUDENT = ("run", "--method", "toy_student", "--dataset", "synthetic_lt", "--quiet")


def test_a_full_disk_is_one_line_and_the_run_resumes(results, cli, toys, monkeypatch):
    import errno

    from ltbench import trainer

    original, calls = trainer.atomic_torch_save, [0]

    def disk_fills_up(obj, path):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(obj, path)

    monkeypatch.setattr(trainer, "atomic_torch_save", disk_fills_up)
    code, _, err = cli(*TOY, *EXACT, "--set", "train.checkpoint_steps=5")
    assert code == 2 and err.startswith("error: no space left on the device writing ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "run the same command again to resume" in err
    run = only_run(results, "synthetic_lt", "toy_linear")
    assert run.checkpoint.exists() and not list(run.path.glob(".*.tmp"))  # the first checkpoint, no debris
    monkeypatch.undo()
    monkeypatch.setenv("LTBENCH_RESULTS", str(results))
    code, _, err = cli(*TOY, *EXACT, "--set", "train.checkpoint_steps=5")
    assert code == 0 and run.read_record()["resumes"] == 1, err


def test_a_teacher_checkpoint_that_is_no_checkpoint_is_one_line(tmp_path, results, cli, toys):
    junk = tmp_path / "teacher.pt"
    junk.write_text("these are notes, not weights\n")
    code, _, err = cli(*STUDENT, "--set", f"method.teacher_checkpoint={junk}")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"method.teacher_checkpoint={junk} is not a PyTorch checkpoint (UnpicklingError" in err
    assert not (results / "runs/synthetic_lt/toy_student").exists()


def test_a_finished_teacher_without_its_weights_is_one_line(results, cli, toys):
    assert cli(*STUDENT)[0] == 0
    teacher = only_run(results, "synthetic_lt", "toy_linear")
    teacher.checkpoint.unlink()
    code, _, err = cli(*STUDENT, "--set", "method.distill=0.25")  # a second student of the same teacher
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"the finished run {teacher.path} no longer has its weights (checkpoint.pt was deleted)" in err
    assert f"ltbench run --config {teacher.config} --force" in err


def test_a_corrupt_training_image_found_by_a_worker_is_one_line(tmp_path, results, cli):
    root = folder_tree(tmp_path)
    (root / "t/c0/3.jpg").write_bytes(b"not an image")  # not the first: found by a DataLoader worker
    code, _, err = cli(*FOLDER_RUN, "--root", str(root), "--set", "data.workers=1")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: image {root / 't/c0/3.jpg'} listed in") and "data.skip_corrupt=true" in err
    log = only_run(results).log.read_text()
    assert "Traceback" not in log and "CorruptImageError: image" in log


def test_a_closed_pipe_ends_the_output_quietly(tmp_path):
    import os
    import subprocess
    import sys

    fixture = Path(__file__).resolve().parent / "fixtures" / "report"
    code = "import sys\nfrom ltbench.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as `| head` is after its lines
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, "report", "--root", str(fixture), "--no-cache"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141


# ----------------------------------------------------------------------------- 12: smaller things


def test_resuming_after_a_finished_stage_names_no_epoch_beyond_it(tmp_path, toys, caplog):
    from ltbench.config import resolve_config
    from ltbench.trainer import Position, Trainer

    cfg = resolve_config("toy2", "synthetic_lt", sets=["stages.*.epochs=2"])
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.stage_names = cfg, list(cfg.stages)
    assert trainer._where(Position(0, 2, 0)) == "after stage train (its 2 epochs are done)"
    assert trainer._where(Position(1, 0, 3)) == "at stage head, epoch 1, batch 3 (of 2 epochs)"
    assert trainer._where(Position(2, 0, 0)) == "after its last stage: evaluating"


def test_a_recipe_error_has_one_period(tmp_path, cli, results):
    root = folder_tree(tmp_path)
    code, _, err = cli(*FOLDER_RUN[:-4], "--root", str(root), "--set", "data.image_size=224")
    assert code == 2 and "does not fit this data" in err and ".." not in err


def test_the_missing_class_warning_names_folder_lt_only_for_it(tmp_path):
    import numpy as np

    from ltbench.filelists import FileList, list_problems

    train = FileList(["a.jpg", "b.jpg"], np.array([0, 2]), "train.txt")
    test = FileList(["c.jpg"], np.array([1]), "test.txt")
    _, (declared,) = list_problems(train, None, test, 3, counted=False)
    assert "check that train.txt is complete" in declared and "folder_lt" not in declared
    (counted,) = list_problems(train, None, test, 3, counted=True)[0]
    assert "labels must be 0..C-1 without gaps, or set data.num_classes" in counted


def test_progress_lines_off_a_terminal_count_images_and_give_the_whole_runs_eta(monkeypatch, caplog):
    from ltbench import trainer

    clock = iter(range(0, 1000, 10))  # 10 s per call of time.monotonic
    monkeypatch.setattr(trainer.time, "monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="ltbench")
    bar = trainer.EpochProgress("train 1/3", 400, 0, enabled=True, every=15, epochs_after=2)
    for _ in range(4):
        bar.update(100, {"loss": 1.5})
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    # t0 = 0; updates at 10 (not yet due), 20 (due: 200 img in 20 s), 30, 40 (due: 400 img in 40 s)
    assert lines == [
        "train 1/3: 200/400 img (50 %), 10 img/s, loss 1.5000, run ETA 1m40s",  # 200 left + 2 x 400, at 10 img/s
        "train 1/3: 400/400 img (100 %), 10 img/s, loss 1.5000, run ETA 1m20s",
    ]


def test_the_bar_on_a_terminal_counts_whole_images(monkeypatch):
    import sys

    from ltbench import trainer

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = trainer.EpochProgress("train 1/3", 403, 0, enabled=True, every=60, epochs_after=0)
    assert "0/403" in str(bar.bar) and "0.00" not in str(bar.bar)
    bar.close()


def test_the_trainer_counts_later_stages_and_a_waiting_student_in_the_eta(tmp_path, results, cli, toys, monkeypatch):
    from ltbench import trainer

    seen = []
    original = trainer.EpochProgress.__init__

    def record(self, desc, total, initial, enabled, every, epochs_after):
        seen.append((desc, epochs_after))
        original(self, desc, total, initial, enabled, every, epochs_after)

    monkeypatch.setattr(trainer.EpochProgress, "__init__", record)
    # the student (2 epochs) trains its 3-epoch teacher first: the teacher's ETA includes the student
    code, _, err = cli(*STUDENT, "--set", "stages.train.epochs=2", "--set", "method.teacher_epochs=3")
    assert code == 0, err
    assert seen == [("train 1/3", 4), ("train 2/3", 3), ("train 3/3", 2), ("train 1/2", 1), ("train 2/2", 0)]


def test_a_local_sweep_says_where_its_runs_are(tmp_path, monkeypatch, caplog):
    from ltbench.cluster import sweep as sweeps

    runs = {r: {"method": "ce", "dataset": "synthetic_lt", "seed": i, "jobs": []} for i, r in enumerate("ab")}
    logs = {r: RunDir(tmp_path / r) for r in runs}
    logs["a"].path.mkdir()
    logs["a"].log.write_text("2026-12-04 16:00:00,000 INFO train 1/30: 1,024/2,478 img (41 %), 900 img/s\n")
    fake = SimpleNamespace(runs=runs, run_dir=logs.get, save=lambda: None, cluster=SimpleNamespace(tasks=1))

    class Job:
        def __init__(self, polls):
            self.job_id, self.polls = "1", polls

        def done(self):
            self.polls -= 1
            return self.polls < 0

        def exception(self):
            return None

    jobs = iter([Job(2), Job(1)])
    monkeypatch.setattr(sweeps, "_job", lambda *a: None)
    caplog.set_level(logging.INFO, logger="ltbench")
    sweeps._run_here(fake, SimpleNamespace(submit=lambda job: next(jobs)), ["a", "b"], 1, poll=0, every=1e-9)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep:")]
    assert lines[0] == (
        "sweep: 0 of 2 runs ended (0 failed), 1 running, 1 queued\n"
        "  a (ce seed 0): train 1/30: 1,024/2,478 img (41 %), 900 img/s"
    )
    assert lines[-1].startswith("sweep: 1 of 2 runs ended (0 failed), 1 running, 0 queued; ETA ~")
    assert lines[-1].endswith("\n  b (ce seed 1): starting")
