"""CLI behaviour and error messages: unknown names, bad keys, missing data, list, dry runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ltbench.datasets.fmnist_lt as fmnist


def test_unknown_method_lists_valid_ones(cli):
    code, out, err = cli("run", "--method", "rid", "--dataset", "synthetic_lt")
    assert code == 2 and "unknown method 'rid'" in err and "Valid methods: " in err and "ce" in err
    assert "Traceback" not in err


def test_unknown_dataset_suggests_close_name(cli):
    code, _, err = cli("run", "--method", "ce", "--dataset", "fmnist")
    assert code == 2 and "unknown dataset 'fmnist'. Did you mean 'fmnist_lt'?" in err


def test_bad_set_key_names_valid_keys(cli):
    code, _, err = cli("run", "--method", "ce", "--dataset", "synthetic_lt", "--set", "stages.train.lr=1")
    assert code == 2 and "unknown config key 'stages.train.lr'" in err and "optim" in err


def test_missing_fashion_mnist_gives_the_three_options(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "DEBIAN_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("LTBENCH_DATA", str(tmp_path / "data"))
    code, _, err = cli(
        "run", "--method", "ce", "--dataset", "fmnist_lt", "--preset", "cpu", "--out", str(tmp_path / "r")
    )
    assert code == 2
    assert "Fashion-MNIST not found" in err
    for option in ("$LTBENCH_DATA/fashion-mnist", "apt-get install dataset-fashion-mnist", "download them from"):
        assert option in err
    code, _, err = cli(
        "run",
        "--method",
        "ce",
        "--dataset",
        "fmnist_lt",
        "--root",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "r"),
    )
    assert code == 2 and "does not hold the Fashion-MNIST files" in err


def test_list_prints_methods_and_datasets(cli):
    code, out, _ = cli("list")
    assert code == 0
    presets = (
        "cpu, cpu_ride, cpu_vit, full, full_bal_softmax, full_deit_lt, full_livt, full_mdcs, full_paco, full_ride, "
        "full_shike, paper, smoke"
    )
    assert "ce " in out and "Cross-entropy baseline" in out and f"presets: {presets}" in out
    assert "fmnist_lt" in out and "synthetic_lt" in out


def test_dry_run_finds_the_same_directory(cli, results):
    args = ("run", "--method", "ce", "--dataset", "fmnist_lt", "--preset", "cpu", "--dry-run")
    first, second = cli(*args)[1], cli(*args)[1]
    assert first == second and f"run directory: {results}/runs/fmnist_lt/ce/" in first
    seeded = cli(*args, "--seed", "1")[1]
    assert seeded.splitlines()[-1] != first.splitlines()[-1]


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "ltbench.cli", "list"], capture_output=True, text=True)
    assert out.returncode == 0 and "fmnist_lt" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "ltbench.cli", "run", "--method", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown method 'x'")


@pytest.mark.parametrize("argv", [["report", "--format", "pdf"], ["run"]])
def test_argparse_errors(argv):
    from ltbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
