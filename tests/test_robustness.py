"""Issue 12, "nothing stale, nothing silent": changed data never returns old numbers, values out of
range are refused before anything is written, damaged or copied records never kill or inflate the
report, data problems are found before training, Ctrl-C checkpoints, and the researcher's
conveniences (--config, --dry-run provenance, steps.csv, show, --force)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_datasets_files import COUNTS, entries, make_tree, write_split

from ltbench.records import RunDir
from ltbench.report import collect, leaderboard

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report"
REPO = Path(__file__).resolve().parents[1]

# ce on a tiny folder_lt tree: one epoch of 16 images of 36-44 x 40 px, worked at 32 px
FOLDER_RUN = (
    "run",
    "--method",
    "ce",
    "--dataset",
    "folder_lt",
    "--preset",
    "smoke",
    "--quiet",
    "--set",
    "train.device=cpu",
    "--set",
    "stages.train.epochs=1",
    "--set",
    "data.image_size=32",
    "--set",
    "stages.train.augment=default",
)


def folder_tree(root: Path, test_counts=(2,) * 5) -> Path:
    return make_tree(root, {"train.txt": entries("t", COUNTS), "test.txt": entries("v", list(test_counts))})


def only_run(results: Path, dataset: str = "folder_lt", method: str = "ce") -> RunDir:
    (path,) = (results / "runs" / dataset / method).iterdir()
    return RunDir(path)


# ----------------------------------------------------------------------------- stale results


def test_changed_data_is_refused_then_force_keeps_the_old_record(tmp_path, results, cli):
    root = folder_tree(tmp_path / "data")
    code, _, err = cli(*FOLDER_RUN, "--root", str(root))
    assert code == 0, err
    run = only_run(results)
    old = run.read_record()
    assert json.loads(run.data.read_text())["fingerprint"] == old["dataset_fingerprint"]
    # the example: a split file fixed after the run (one image relabelled)
    rows = entries("t", COUNTS)
    rows[0] = (rows[0][0], 1)
    write_split(root / "train.txt", rows)
    code, out, err = cli(*FOLDER_RUN, "--root", str(root))
    assert code == 2 and "already finished" not in out
    assert f"dataset fingerprint {old['dataset_fingerprint']}" in err and "--force" in err
    assert run.read_record() == old  # untouched
    code, out, err = cli(*FOLDER_RUN, "--root", str(root), "--force")
    assert code == 0, err
    new = run.read_record()
    assert new["dataset_fingerprint"] != old["dataset_fingerprint"]
    (aside,) = run.superseded.iterdir()
    assert json.loads((aside / "run.json").read_text()) == old  # set aside, not deleted
    finished, _ = collect(results)
    assert finished["fingerprint"].tolist() == [new["dataset_fingerprint"]]  # the old one is not reported
    code, out, _ = cli(*FOLDER_RUN, "--root", str(root))  # the same data again: finished
    assert code == 0 and "already finished" in out


def test_two_folder_lt_datasets_never_share_a_run(tmp_path, results, cli):
    a = folder_tree(tmp_path / "a")
    b = folder_tree(tmp_path / "b", test_counts=(3,) * 5)
    assert cli(*FOLDER_RUN, "--root", str(a))[0] == 0
    record = only_run(results).read_record()
    code, out, err = cli(*FOLDER_RUN, "--root", str(b))
    assert code == 2 and f"(root {a})" in err and f"(root {b})" in err
    assert only_run(results).read_record() == record


# ----------------------------------------------------------------------------- values out of range


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("stages.train.batch_size=0", "stages.train.batch_size=0 is out of range: it must be >= 1"),
        ("stages.train.accum_steps=0", "stages.train.accum_steps=0 is out of range: it must be >= 1"),
        ("stages.train.epochs=-1", "stages.train.epochs=-1 is out of range: it must be >= 0"),
        ("eval.batch_size=0", "eval.batch_size=0 is out of range: it must be >= 1"),
        ("stages.train.optim.lr=-1", "stages.train.optim.lr=-1.0 is out of range: it must be >= 0"),
        ("data.workers=-3", "data.workers=-3 is out of range: it must be >= -1"),
        ("data.image_size=-1", "data.image_size=-1 is out of range: it must be >= 1"),  # synthetic_lt's own size
        ("train.seed=%d" % 2**64, "train.seed=%d is out of range: it must be >= 0 and <= %d" % (2**64, 2**63 - 1)),
        ("data.seed=-1", "data.seed=-1 is out of range: it must be >= 0 and <= 4294967295 (2**32 - 1)"),
        ("stages.*.schedule.milestones=[3,-2]", "stages.train.schedule.milestones=[3, -2] is out of range"),
    ],
)
def test_out_of_range_values_are_refused_before_any_run_directory(cli, results, assignment, message):
    code, out, err = cli("run", "--method", "ce", "--dataset", "synthetic_lt", "--set", assignment)
    assert code == 2 and message in err and "Traceback" not in err
    assert not results.exists()


def test_a_run_that_trains_nothing_is_refused(cli, results):
    code, _, err = cli("run", "--method", "ce", "--dataset", "synthetic_lt", "--set", "stages.*.epochs=0")
    assert code == 2 and "every stage has 0 epochs (stages.train.epochs)" in err


def test_a_seed_beyond_64_bits_is_refused(cli, results):
    code, _, err = cli("run", "--method", "ce", "--dataset", "synthetic_lt", "--seed", str(2**70))
    assert code == 2 and "train.seed" in err and "2**63 - 1" in err


# ----------------------------------------------------------------------------- damaged and copied records


def copy_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    return root


def test_a_copied_run_directory_counts_once(tmp_path, cli):
    root = copy_fixture(tmp_path)
    runs = root / "runs/synthetic_lt/ce"
    shutil.copytree(runs / "ce0000000002", runs / "zz-copy-of-seed-2")
    finished, _ = collect(root)
    board = leaderboard(finished[finished["dataset"] == "synthetic_lt"]).set_index(["method", "preset"])
    assert board.loc[("ce", "cpu")]["n"] == 3  # not 4
    assert any("zz-copy-of-seed-2" in note and "counted once" in note for note in finished.attrs["notes"])
    code, out, _ = cli("report", "--root", str(root))
    assert code == 0 and "zz-copy-of-seed-2" in out


@pytest.mark.parametrize("content", ["", "{not json", '{"run_id": "x"}', "[]"])
def test_a_damaged_run_json_is_named_and_skipped(tmp_path, cli, content):
    root = copy_fixture(tmp_path)
    damaged = root / "runs/synthetic_lt/ce/ce0000000001"
    (damaged / "run.json").write_text(content)
    (damaged / "config.json").write_text(
        json.dumps({"method_name": "ce", "dataset_name": "synthetic_lt", "preset": "cpu", "train": {"seed": 1}})
    )
    code, out, err = cli("report", "--root", str(root))
    assert code == 0 and str(damaged / "run.json") in out
    finished, unfinished = collect(root)
    assert "ce0000000001" not in finished["run_id"].tolist()
    assert unfinished.set_index("run_id").loc["ce0000000001", "state"] == "damaged record"
    assert not RunDir(damaged).is_done()
    code, out, _ = cli("status", "--root", str(root))
    assert code == 0
    (line,) = [line for line in out.splitlines() if "ce0000000001" in line]
    assert "damaged record" in line and "| done" not in line


def test_report_out_refuses_directories_and_existing_files(tmp_path, cli):
    code, _, err = cli("report", "--root", str(FIXTURE), "--out", str(tmp_path))
    assert code == 2 and "is a directory" in err
    target = tmp_path / "board.md"
    target.write_text("keep me")
    code, _, err = cli("report", "--root", str(FIXTURE), "--out", str(target))
    assert code == 2 and "already exists" in err and target.read_text() == "keep me"
    code, _, err = cli("report", "--root", str(FIXTURE), "--out", str(target), "--force")
    assert code == 0 and target.read_text() == (FIXTURE / "expected.md").read_text()
    code, _, err = cli("report", "--root", str(FIXTURE), "--out", str(target / "sub.md"))
    assert code == 2 and "cannot write" in err


def test_run_out_that_is_a_file_or_unwritable(tmp_path, cli, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("")
    code, _, err = cli("run", "--method", "ce", "--dataset", "synthetic_lt", "--out", str(afile))
    assert code == 2 and "is a file, not a directory" in err
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real = os.open

    def deny(path, *args, **kwargs):  # root ignores permission bits: simulate a read-only directory
        if str(path).startswith(str(readonly)):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    code, _, err = cli("run", "--method", "ce", "--dataset", "synthetic_lt", "--out", str(readonly))
    assert code == 2 and "cannot write there (Permission denied)" in err


def test_index_shot_rule_beyond_a_datasets_classes_is_a_note_not_an_abort(tmp_path, cli):
    code, out, err = cli("report", "--root", str(FIXTURE), "--shot-rule", "index:2,8")
    assert code == 0, err
    assert "beyond the 3 classes" in out and "synthetic_lt" in out
    finished, _ = collect(FIXTURE, rule="index:2,8")
    assert finished["overall"].notna().all() and finished["many"].isna().all()
    code, _, err = cli("report", "--root", str(FIXTURE), "--shot-rule", "index:5,2")
    assert code == 2 and "need 0 <= A <= B" in err  # a malformed rule is still an error


# ----------------------------------------------------------------------------- promises kept

TOY = ("run", "--method", "toy_linear", "--dataset", "synthetic_lt", "--quiet", "--set", "train.device=cpu")


@pytest.fixture
def toys():
    import toy_methods

    return toy_methods


def test_ctrl_c_writes_a_checkpoint_and_the_run_resumes(results, cli, toys, monkeypatch):
    from ltbench.trainer import Trainer

    original, calls = Trainer._maybe_checkpoint, [0]

    def press_ctrl_c_at_step_3(self, step):
        calls[0] += 1
        if calls[0] == 3:
            signal.raise_signal(signal.SIGINT)  # the handler asks for a stop; no KeyboardInterrupt
        original(self, step)

    monkeypatch.setattr(Trainer, "_maybe_checkpoint", press_ctrl_c_at_step_3)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    code, out, err = cli(*TOY, "--set", "train.checkpoint_minutes=60", "--set", "train.log_every=1")
    assert code == 130 and "a checkpoint was written" in err
    run = only_run(results, "synthetic_lt", "toy_linear")
    run.steps.write_text(run.steps.read_text() + "train,1,4,0.1,9.9\n")  # a row after the checkpoint
    assert torch.load(run.checkpoint, weights_only=False)["state"]["position"] == {"stage": 0, "epoch": 0, "batch": 3}
    assert not run.is_done() and run.state() == "resumable"
    assert signal.getsignal(signal.SIGINT) is before  # restored
    monkeypatch.setattr(Trainer, "_maybe_checkpoint", original)
    code, out, err = cli(*TOY, "--set", "train.checkpoint_minutes=60", "--set", "train.log_every=1")
    assert code == 0 and run.read_record()["resumes"] == 1
    import pandas as pd

    steps = pd.read_csv(run.steps)
    assert steps["step"].tolist() == list(range(1, 14)) and 9.9 not in steps["loss"].tolist()  # redone once


def test_status_shows_a_crashed_runs_error_and_log(results, cli, toys):
    code, _, err = cli("run", "--method", "toy_nan", "--dataset", "synthetic_lt", "--quiet")
    assert code == 2 and "loss is nan" in err
    code, out, _ = cli("status")
    (line,) = [line for line in out.splitlines() if "toy_nan" in line]
    run = only_run(results, "synthetic_lt", "toy_nan")
    assert line.startswith("| failed") and "NonFiniteLossError: loss is nan" in line and str(run.log) in line


def test_steps_csv_has_loss_lr_and_every_loss_term(results, cli, toys):
    from ltbench.registry import METHODS, register_method

    if "toy_terms" not in METHODS:

        @register_method("toy_terms")
        class Terms(METHODS.get("toy_linear")):
            """The linear model, reporting two loss terms beside its loss."""

            def train_step(self, batch, ctx):
                loss = super().train_step(batch, ctx)["loss"]
                return {"loss": loss, "ce": loss.detach(), "half": loss.detach() / 2}

    code, _, err = cli(
        "run", "--method", "toy_terms", "--dataset", "synthetic_lt", "--quiet", "--set", "train.log_every=2"
    )
    assert code == 0, err
    import pandas as pd

    steps = pd.read_csv(only_run(results, "synthetic_lt", "toy_terms").steps)
    n_steps = -(-406 // 32)  # synthetic_lt: 406 training images, batches of 32 -> 13 steps, one epoch
    assert steps.columns.tolist() == ["stage", "epoch", "step", "lr", "loss", "ce", "half"]
    assert steps["step"].tolist() == list(range(2, n_steps + 1, 2))
    assert np.allclose(steps["half"], steps["loss"] / 2) and np.allclose(steps["ce"], steps["loss"])
    assert (steps["lr"] > 0).all() and steps["lr"].is_monotonic_decreasing  # cosine


# ----------------------------------------------------------------------------- researcher features


def test_rerun_from_a_recorded_config(results, cli):
    args = ("--method", "ce", "--dataset", "synthetic_lt", "--preset", "smoke", "--quiet")
    assert cli("run", *args, "--set", "stages.train.epochs=1")[0] == 0
    (path,) = (results / "runs/synthetic_lt/ce").iterdir()
    code, out, _ = cli("run", "--config", str(path / "config.json"), "--quiet")
    assert code == 0 and f"already finished: {path}" in out
    code, out, _ = cli("run", "--config", str(path / "run.json"), "--dry-run")  # a record holds its config
    assert code == 0 and f"run directory: {path}" in out
    code, out, _ = cli("run", "--config", str(path / "config.json"), "--set", "stages.train.epochs=3", "--dry-run")
    assert code == 0 and "--set stages.train.epochs=3" in out and f"run directory: {path}" not in out
    assert "| preset" in out and "--config" in out  # the recorded preset differs from the method's defaults
    code, _, err = cli("run", "--config", str(path / "config.json"), "--preset", "cpu")
    assert code == 2 and "--config FILE holds the method" in err
    code, _, err = cli("run", "--config", str(path / "nope.json"))
    assert code == 2 and "does not exist" in err


def test_dry_run_shows_what_differs_from_the_defaults_and_who_set_it(cli, results):
    code, out, _ = cli(
        "run", "--method", "ce", "--dataset", "synthetic_lt", "--preset", "smoke", "--set", "stages.train.epochs=3",
        "--seed", "4", "--dry-run",
    )  # fmt: skip
    assert code == 0
    cells = [line.split("|") for line in out.splitlines() if line.startswith("| ")]
    rows = {cell[1].strip(): cell[3].strip() for cell in cells}
    assert rows["stages.train.epochs"] == "--set stages.train.epochs=3"
    assert rows["stages.train.batch_size"] == "preset smoke"
    assert rows["train.seed"] == "--seed"
    assert "model.arch" not in rows and "stages.train.optim.momentum" not in rows  # unchanged defaults
    assert not results.exists()


# ----------------------------------------------------------------------------- data checks


def folder(root: Path, **params):
    from ltbench.registry import DATASETS, load_plugins

    load_plugins()
    ds = DATASETS.get("folder_lt")()
    return ds, ds.Params(root=str(root), **params)


def test_a_named_val_file_must_exist(tmp_path):
    from ltbench.errors import DataError

    ds, params = folder(folder_tree(tmp_path), val_file="my_val.txt")
    with pytest.raises(DataError, match=r"folder_lt val split file not found in .* \(looked for my_val.txt"):
        ds.build(params)
    ds, params = folder(tmp_path)  # not named: drawn from training, as documented
    assert ds.build(params).details["val_split"].startswith("up to 3 training images per class")


def test_a_test_label_beyond_the_training_classes_is_an_error(tmp_path):
    from ltbench.errors import DataError

    root = folder_tree(tmp_path)
    write_split(root / "test.txt", [*entries("v", [1] * 5), ("v/c0/0.jpg", 7)])
    ds, params = folder(root)
    with pytest.raises(DataError, match=r"test.txt, line 6: label 7 is out of range for 5 classes"):
        ds.build(params)


def test_label_problems_are_refused_at_run_and_reported_by_verify(tmp_path, cli, results):
    root = folder_tree(tmp_path)
    rows = [(p, 2 if y == 1 else y) for p, y in entries("t", COUNTS)]  # class 1 has no training image
    write_split(root / "train.txt", rows)
    code, _, err = cli(*FOLDER_RUN, "--root", str(root))
    assert code == 2 and "1 of 5 classes have no training image" in err and "classes 1)" in err
    assert not (results / "runs").exists()  # no run directory
    code, out, _ = cli("data", "verify", "--dataset", "folder_lt", "--root", str(root))
    assert code == 1 and "1 of 5 classes have no training image" in out
    rows = entries("t", COUNTS)
    write_split(root / "train.txt", [*rows, rows[0], (rows[1][0], 3)])  # a duplicate line, a second label
    code, _, err = cli(*FOLDER_RUN, "--root", str(root))
    assert code == 2 and "1 images have two labels" in err and "t/c0/1.jpg: label 0 at" in err
    code, out, _ = cli("data", "verify", "--dataset", "folder_lt", "--root", str(root))
    assert code == 1 and "1 duplicate lines" in out and "line 17 repeats" in out and "two labels" in out


def test_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    from ltbench.data import FileSplit

    levels = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(levels).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    split = FileSplit(tmp_path, ["deep.png"], np.array([0]))
    rgb = np.asarray(split.load(0))
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 64, 128, 255]  # not clipped to 0 / 255


def test_folder_lt_reads_its_image_size_and_a_recipe_that_does_not_fit_is_a_config_error(tmp_path, cli, results):
    root = folder_tree(tmp_path)
    ds, params = folder(root)
    assert ds.build(params).image_size == 36  # the first training image is 36 x 40 px
    code, _, err = cli(*FOLDER_RUN[:-4], "--root", str(root), "--set", "data.image_size=224")
    assert code == 2 and "Traceback" not in err
    assert "stages.train.augment=pad_crop_flip does not fit this data" in err and "data.image_size" in err
    code, _, err = cli(*FOLDER_RUN[:-2], "--root", str(root), "--set", "stages.train.augment=normalize")
    assert code == 2 and "stages.train.augment=normalize turns the first train image into 40x36 px" in err
    assert not (results / "runs").exists()  # no run directory


def test_a_missing_or_corrupt_test_image_is_found_before_training(tmp_path, cli, results):
    root = folder_tree(tmp_path)
    (root / "v/c3/1.jpg").unlink()
    code, _, err = cli(*FOLDER_RUN, "--root", str(root))
    assert code == 2 and "1 listed images do not exist" in err and "test.txt, line 8" in err
    assert not (results / "runs").exists()  # no run directory
    root = folder_tree(tmp_path / "b")
    (root / "v/c0/0.jpg").write_bytes(b"not an image")
    code, _, err = cli(*FOLDER_RUN, "--root", str(root))
    assert code == 2 and "v/c0/0.jpg listed in" in err and "cannot be decoded" in err
    assert not (results / "runs").exists()  # no run directory


def test_skipped_corrupt_images_are_said_on_the_console_and_in_the_report(tmp_path, cli, results):
    root = folder_tree(tmp_path)
    (root / "v/c2/0.jpg").write_bytes(b"not an image")
    code, out, err = cli(*FOLDER_RUN, "--root", str(root), "--set", "data.skip_corrupt=true")
    assert code == 0, err
    assert "note: 1 unreadable test images were skipped (data.skip_corrupt)" in out and "v/c2/0.jpg" in out
    code, out, _ = cli("report")
    assert "evaluated on test without 1 unreadable images (data.skip_corrupt): v/c2/0.jpg" in out


def test_show_a_run_by_id_prefix(results, cli, toys):
    code, _, err = cli(*TOY, "--set", "stages.train.epochs=2", "--set", "train.log_every=4")
    assert code == 0, err
    run = only_run(results, "synthetic_lt", "toy_linear")
    code, out, _ = cli("show", run.path.name[:6])
    assert code == 0
    assert f"run {run.path.name}: toy_linear on synthetic_lt" in out and "state: done" in out
    assert "| stages.train.epochs | 2 " in out and "--set (recorded)" in out
    assert "stage timings: train" in out and "test: overall" in out
    assert f"{run.steps}  (loss curves" in out and str(run.log) in out
    assert cli("show", str(run.path))[1] == out
    code, _, err = cli("show", "fffffff")
    assert code == 2 and "no run id starting with 'fffffff'" in err


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["status"], ["report", "--root", str(FIXTURE)]])
def test_commands_that_need_no_torch_do_not_import_it(argv, tmp_path):
    code = (
        "import sys\nfrom ltbench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("method, preset", [("ce", "cpu"), ("ce", "cpu_vit"), ("ride", "cpu"), ("livt", "cpu")])
def test_every_cpu_recipe_serves_any_small_dataset_and_leaves_fmnist_unchanged(method, preset):
    from ltbench.config import resolve_config

    fmnist = resolve_config(method, "fmnist_lt", preset)
    for dataset in ("synthetic_lt", "folder_lt", "cifar10_lt"):
        other = resolve_config(method, dataset, preset)
        assert other.stages.keys() == fmnist.stages.keys()
        assert {n: s.epochs for n, s in other.stages.items()} == {n: s.epochs for n, s in fmnist.stages.items()}
    # pinned: a change to a cpu recipe, or a new semantic config field, orphans every finished run of
    # it, so it must be deliberate (update these ids, and say so, when it is)
    assert (
        fmnist.run_id()
        == {
            # ResNet-8 and patch-7 ViT since the leaderboard's hour budget; then train.precision,
            # train.sync_bn and eval.precision (issue 24: precision is part of a recipe)
            ("ce", "cpu"): "13b90256f1fe",
            ("ce", "cpu_vit"): "87d1fbf4d7c3",
            ("ride", "cpu"): "6aa9136b89bf",
            ("livt", "cpu"): "21d03f8e70f4",
        }[(method, preset)]
    )


def test_epoch_lines_give_the_whole_runs_eta(tmp_path, toys, caplog):
    import logging

    from ltbench.config import resolve_config
    from ltbench.runner import train

    caplog.set_level(logging.INFO, logger="ltbench")
    train(resolve_config("toy2", "synthetic_lt", sets=["stages.*.epochs=2"]), tmp_path, progress=True)
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert "stage ETA" in lines[0] and "run ETA ~" in lines[0]  # train 1/2: one train and two head epochs left
    assert "run ETA ~" in lines[1]  # train 2/2: the head stage is still to come
    assert "ETA" not in lines[-1]  # head 2/2: nothing left


def test_an_unfinished_run_is_bound_to_its_data_once_it_has_trained(tmp_path):
    from types import SimpleNamespace

    from ltbench.runner import StaleRunError, check_data

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.data.write_text(json.dumps({"fingerprint": "aaaa", "root": "/old"}))
    other = SimpleNamespace(fingerprint="bbbb", details={"root": "/new"})
    check_data(run, other)  # no checkpoint yet: nothing was trained on the old data
    run.checkpoint.write_bytes(b"")
    with pytest.raises(StaleRunError, match=r"fingerprint aaaa \(root /old\), but the data now has fingerprint bbbb"):
        check_data(run, other)
    check_data(run, SimpleNamespace(fingerprint="aaaa", details={}))  # the same data resumes


def test_a_corrupt_test_image_beyond_the_first_stops_training_early(tmp_path, cli, results):
    root = folder_tree(tmp_path)
    (root / "v/c4/1.jpg").write_bytes(b"not an image")  # the last test image: the preflight opens the first
    code, _, err = cli(*FOLDER_RUN, "--root", str(root), "--set", "stages.train.epochs=40")  # the last --set wins
    assert code == 2 and "v/c4/1.jpg listed in" in err and "found while training" in err
    run = only_run(results)
    position = torch.load(run.checkpoint, weights_only=False)["state"]["position"]
    assert not run.is_done() and position["epoch"] < 40  # stopped long before the end
    assert run.state() == "failed" and "found while training" in run.last_error()


def test_step_log_mirrors_to_tensorboard_when_installed(tmp_path, monkeypatch):
    import types

    from ltbench.trainer import StepLog

    scalars = []
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = lambda logdir: types.SimpleNamespace(add_scalar=lambda *a: scalars.append((logdir, *a)))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    log = StepLog(tmp_path / "steps.csv", every=2, enabled=True)
    for step in (1, 2):
        log.add({"loss": float(step), "kd": 0.5})
        log.step("train", 1, step, 0.1)
    assert scalars == [
        (str(tmp_path / "tb"), "train/lr", 0.1, 2),
        (str(tmp_path / "tb"), "train/loss", 1.5, 2),
        (str(tmp_path / "tb"), "train/kd", 0.5, 2),
    ]
    assert (tmp_path / "steps.csv").read_text() == "stage,epoch,step,lr,loss,kd\ntrain,1,2,0.1,1.5,0.5\n"
