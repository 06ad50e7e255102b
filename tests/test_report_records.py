"""Records the report cannot use are named, never fatal nor silent (issue 26, items 3, 7, 8, 9), and
the report package's modules import one way (issue 29), and what a record carries to the board."""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from ltbench.config import resolve_config
from ltbench.records import READ_SCHEMAS, RunDir
from ltbench.report import collect, leaderboard, load_published, paper_gaps

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report"
CE0 = Path("runs/synthetic_lt/ce/ce0000000000")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LTBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    return root


def edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def give_config(run: RunDir) -> None:
    run.config.write_text(json.dumps(resolve_config("ce", "synthetic_lt", "cpu", seed=0).to_dict()))


def test_a_record_of_another_schema_is_named_in_report_show_and_status(cli, root):
    run = RunDir(root / CE0)
    edit(run.record, lambda r: r.update(schema=2))
    give_config(run)
    assert READ_SCHEMAS == (1,) and run.state() == "other schema" and not run.is_done()
    assert "schema 2" in run.schema_error() and "reads schema 1" in run.schema_error()
    code, out, _ = cli("report", "--root", str(root))
    assert code == 0 and f"skipped {run.record}: written with run.json schema 2; this ltbench reads schema 1" in out
    assert re.search(r"\| synthetic_lt +\| ce +\| cpu +\| \S+ +\| 2/3 +\|", out)  # the other seeds stay
    code, out, _ = cli("show", str(run.path), "--root", str(root))
    assert code == 0 and "state: other schema" in out and "reads schema 1" in out
    code, out, _ = cli("status", "--root", str(root))
    assert code == 0 and "other schema" in out and "sets it aside" in out


def test_a_record_with_renamed_head_fields_is_skipped_and_named(cli, root):
    run = RunDir(root / CE0)

    def rename(r):
        head = r["splits"]["test"]["heads"]["main"]
        r["splits"]["test"]["heads"]["main"] = {"n_correct": head["correct"], "n_total": head["total"]}

    edit(run.record, rename)
    give_config(run)
    assert run.state() == "damaged record" and "head 'main' of split 'test'" in run.record_error()
    code, out, err = cli("report", "--root", str(root))
    assert code == 0 and "head 'main' of split 'test' is not correct/total lists of 3 classes" in out
    finished, _ = collect(root)
    assert "ce0000000000" not in set(finished["run_id"])
    code, out, _ = cli("show", str(run.path))
    assert code == 0 and "state: damaged record" in out and "problem:" in out


def test_a_record_without_the_test_split_is_named(cli, root):
    record = root / CE0 / "run.json"
    edit(record, lambda r: r.update(splits={"val": r["splits"]["test"]}))
    for _ in range(2):  # parsed, then from the cache: named both times
        finished, _ = collect(root)
        assert "ce0000000000" not in set(finished["run_id"])
        assert any(
            f"skipped {record}: the run has no test split (its record has: val)" in n for n in finished.attrs["notes"]
        )


def test_no_finished_run_still_lists_the_unfinished_ones(cli, root):
    for record in root.glob("runs/*/*/*/run.json"):
        record.unlink()
    code, out, _ = cli("report", "--root", str(root))
    assert code == 0 and out.startswith("No finished runs.") and "Unfinished runs (not averaged)" in out
    assert "ride00000001" in out
    code, out, _ = cli("report", "--root", str(root), "--format", "html")
    assert code == 0 and "ride00000001" in out and "<table" in out


def test_a_missing_or_file_root_is_refused(cli, tmp_path):
    code, _, err = cli("report", "--root", str(tmp_path / "nowhere"))
    assert code == 2 and "no such directory" in err
    (tmp_path / "file").write_text("x")
    code, _, err = cli("report", "--root", str(tmp_path / "file"))
    assert code == 2 and "is a file" in err
    code, _, err = cli("show", "abc", "--root", str(tmp_path / "nowhere"))
    assert code == 2 and "no such directory" in err


def test_a_class_without_test_images_is_noted_and_its_cells_marked(cli, root):
    # synthetic_lt counts 200 / 50 / 10: the third class is "few" under the strict rule
    def no_few_images(r):
        r["splits"]["test"]["heads"]["main"]["total"][2] = 0
        r["splits"]["test"]["heads"]["main"]["correct"][2] = 0

    edit(root / CE0 / "run.json", no_few_images)
    finished, _ = collect(root)
    run = finished.set_index("run_id").loc["ce0000000000"]
    assert run["untested"] == "balanced,few" and run["balanced"] == pytest.approx((90 + 60) / 2)
    assert any("class(es) 2 have no test images in 1 run(s)" in n for n in finished.attrs["notes"])
    board = leaderboard(finished).set_index(["dataset", "method", "preset"])
    assert board.loc[("synthetic_lt", "ce", "cpu"), "untested"] == "balanced,few"
    code, out, _ = cli("report", "--root", str(root))
    row = next(line for line in out.splitlines() if "| synthetic_lt | ce " in line and "| cpu " in line)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[7].endswith("‡") and cells[10].endswith("‡") and "‡" not in cells[6] + cells[8] + cells[9]
    assert "‡ the mean leaves out classes that have no test images" in out


def test_report_modules_import_one_way():
    """render -> tables -> stats -> records: no module imports one above it."""
    package = Path(__file__).resolve().parents[1] / "ltbench" / "report"
    order = ["records", "stats", "tables", "render"]
    for k, name in enumerate(order):
        tree = ast.parse((package / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}
        assert not imported & set(order[k:]), (name, imported)
        assert len((package / f"{name}.py").read_text().splitlines()) <= 400


def test_run_never_overwrites_a_record_of_another_schema(cli, results):
    cfg = resolve_config("ce", "synthetic_lt", "smoke")
    run = RunDir.of(results, "synthetic_lt", "ce", cfg.run_id())
    run.path.mkdir(parents=True)
    run.config.write_text(json.dumps(cfg.to_dict()))
    record = {"schema": 2, "run_id": cfg.run_id(), "result": {"top1": 50.0}}
    run.record.write_text(json.dumps(record))
    code, out, err = cli("run", "--method", "ce", "--dataset", "synthetic_lt", "--preset", "smoke", "--quiet")
    assert code == 2 and "written with run.json schema 2; this ltbench reads schema 1" in err and "--force" in err
    assert json.loads(run.record.read_text()) == record  # kept as it was


def test_the_imbalance_factor_a_run_was_built_with_picks_its_published_rows(root):
    """dataset_details.imb_factor of the records reaches the board; the fp-b run has none."""
    for seed in range(3):
        edit(
            root / f"runs/synthetic_lt/ce/ce000000000{seed}/run.json",
            lambda r: r.update(dataset_details={"imb_factor": 100}),
        )
    (root / "published.csv").write_text(
        "dataset,method,variant,overall,many,medium,few,shot_rule,source,image_size,imb_factor\n"
        "synthetic_lt,ce,at IF 100,50.0,,,,strict,official,,100\n"
        "synthetic_lt,ce,at IF 50,60.0,,,,strict,official,,50\n"
    )
    board = leaderboard(collect(root)[0])
    ce = board[board["method"] == "ce"].set_index("fingerprint")["imb_factor"]
    assert ce["fp-a"] == 100.0 and math.isnan(ce["fp-b"])
    gaps = paper_gaps(board, load_published(None, root))
    assert gaps["variant"].tolist() == ["at IF 100"]
    # the fp-a ce runs: 56.67, 53.33 and 50.00 % overall (make_report_fixture.py), mean 160/3
    assert gaps["vs_fingerprint"].tolist() == ["fp-a"] and gaps["gap_overall"].iloc[0] == pytest.approx(160 / 3 - 50)
