"""`ltbench report` on a committed frozen run tree: exact output in every format and layout, and
the numbers checked by hand (see tests/fixtures/make_report_fixture.py).

Set LTBENCH_UPDATE_GOLDEN=1 to rewrite the expected files after a deliberate change (then read the
diff)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from ltbench.config import resolve_config
from ltbench.errors import ConfigError
from ltbench.report import (
    collect,
    comparable_published,
    compute_table,
    leaderboard,
    load_published,
    paired_deltas,
    paper_gaps,
    parse_shot_rules,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report"
PNG = re.compile(r"base64,[A-Za-z0-9+/=]+")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LTBENCH_CACHE", str(tmp_path / "cache"))  # never the user's ~/.cache


GOLDEN = {
    "expected.md": [],
    "expected.latex": ["--format", "latex"],
    "expected.csv": ["--format", "csv"],
    "expected_wide.md": ["--layout", "wide", "--baseline", "ce", "--compute"],
    "expected_wide.latex": ["--format", "latex", "--layout", "wide", "--ci"],
    "expected_ci.csv": ["--format", "csv", "--ci", "--baseline", "ce"],
    "expected_rules.md": ["--shot-rule", "toy_lt=index:1,3", "--ci"],
    "expected_baseline.md": ["--baseline", "ride"],  # synthetic_lt's fp-b version has no ride row
    "expected.json": ["--format", "json", "--baseline", "ce", "--compute"],
    "expected.html": ["--format", "html", "--layout", "wide", "--baseline", "ce", "--compute"],
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_exact_output(cli, name):
    code, out, err = cli("report", "--root", str(FIXTURE), *GOLDEN[name])
    assert code == 0, err
    if name.endswith(".html"):  # the embedded PNGs depend on the matplotlib build: compared apart
        assert len(PNG.findall(out)) == 7 and out.count("<table class='sortable'>") == 3
        out = PNG.sub("base64,PNG", out)
    if os.environ.get("LTBENCH_UPDATE_GOLDEN"):
        (FIXTURE / name).write_text(out)
    assert out == (FIXTURE / name).read_text()


def board_of(dataset: str, **kwargs):
    finished, unfinished = collect(FIXTURE, **kwargs)
    board = leaderboard(finished)
    return finished, unfinished, board[board["dataset"] == dataset]


def test_numbers_by_hand():
    _, unfinished, board = board_of("synthetic_lt")
    board = board.set_index(["method", "preset"])
    ce = board.loc[("ce", "cpu")]
    assert ce["n"] == 3 and ce["seeds"] == "0,1,2"
    assert ce["overall"] == pytest.approx((170 / 3 + 160 / 3 + 50) / 3)  # 53.33
    assert ce["overall_std"] == pytest.approx(10 / 3)  # sample std of 56.67, 53.33, 50.00
    assert ce["many"] == pytest.approx(90) and ce["many_std"] == pytest.approx(10)
    assert ce["few"] == pytest.approx(20) and ce["few_std"] == pytest.approx(10)
    assert ce["overall_ci95"] == pytest.approx(4.303 * (10 / 3) / math.sqrt(3), rel=1e-3)  # t(0.975, 2)
    # a run of another preset and dataset fingerprint is never averaged in
    assert board.loc[("ce", "smoke")]["n"] == 1
    assert math.isnan(board.loc[("ride", "cpu")]["overall_std"])  # one seed: no spread
    assert board.loc[("ride", "cpu")]["n_expected"] == 3  # its dataset's runs cover seeds 0, 1, 2
    assert unfinished[["method", "seed", "state"]].values.tolist() == [["ride", 1, "not started"]]


def test_paired_deltas_bold_and_code_versions_by_hand():
    finished, _, board = board_of("toy_lt")
    deltas = paired_deltas(finished, board, "ce")
    ride = board[board["config"] == "method.num_experts=3"].index[0]
    # few (classes of 12 and 6 images): ride 45, 40, 50 against ce 15, 15, 20 -> differences 30, 25, 30
    assert deltas.loc[ride, "delta_few"] == pytest.approx(85 / 3) and deltas.loc[ride, "pairs"] == 3
    # paired t = mean / (sd / sqrt 3) = 17.0 with 2 degrees of freedom: p = 1 - t / sqrt(t^2 + 2)
    assert deltas.loc[ride, "p_few"] == pytest.approx(1 - 17 / math.sqrt(17**2 + 2))
    ride4 = board[board["config"] == "method.num_experts=4"].index[0]
    assert deltas.loc[ride4, "pairs"] == 2  # seeds 0 and 1 only
    ce = board[board["method"] == "ce"].iloc[0]
    assert ce["revisions"] == "aaaaaaa,bbbbbbb" and ce["config"] == "v-toy-"  # a lone config keeps its hash
    from ltbench.report import best_cells

    best = best_cells(board)
    # ride's few interval [32.6, 57.4] lies above ride-4's [30, 30]: bold; its medium interval
    # [61.2, 75.5] does not exclude ride-4's two-seed [-31.3, 94.3] (t(0.975, 1) = 12.71): not bold
    assert (ride, "few") in best and (ride, "medium") not in best
    assert board.loc[ride, "medium_hi"] == pytest.approx(205 / 3 + 4.3027 * 5 / math.sqrt(3) / math.sqrt(3), rel=1e-4)


def test_compute_columns_are_read_from_the_records():
    finished, _, board = board_of("toy_lt")
    table = compute_table(finished, board).set_index("config")
    ride = table.loc["method.num_experts=3"]
    assert ride["wall_total_s"] == 190 and ride["epochs"] == "train 16 · router 5"
    assert ride["macs"] == 78e6 and ride["macs_routed"] == 55e6 and ride["peak_mib"] == 710
    assert table.loc["v-toy-", "device"] == "cpu ×1" and math.isnan(table.loc["v-toy-", "macs_routed"])


def test_shot_rules_apply_per_dataset(cli):
    assert parse_shot_rules(["cifar100_lt=index:36,71,imagenet_lt=oltr", "strict"]) == {
        "cifar100_lt": "index:36,71",
        "imagenet_lt": "oltr",
        "": "strict",
    }
    with pytest.raises(ConfigError, match="unknown shot rule"):
        parse_shot_rules(["toy_lt=stirct"])
    # one index rule for every dataset cannot fit synthetic_lt's 3 classes: its groups are left out
    # with a note that says what to do, and the report goes on (issue: never abort the whole report)
    code, out, _ = cli("report", "--root", str(FIXTURE), "--shot-rule", "index:4,5")
    assert code == 0 and "--shot-rule synthetic_lt=RULE" in out and "many/medium/few of synthetic_lt" in out
    finished, _ = collect(FIXTURE, rule=parse_shot_rules(["toy_lt=index:4,5"]))
    toy = finished[finished["dataset"] == "toy_lt"].set_index("run_id")
    # positions [0, 4) many, [4, 5) medium, [5, 6) few; ce seed 0 got 9, 9, 6, 5 | 2 | 1 of 10 right
    row = toy.loc["toyce0000000"]
    assert (row["many"], row["medium"], row["few"]) == (pytest.approx(72.5), pytest.approx(20.0), pytest.approx(10.0))
    assert (finished[finished["dataset"] == "synthetic_lt"]["rule"] == "strict").all()


def test_each_dataset_has_its_own_default_rule(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    for path in (root / "runs/synthetic_lt").glob("*/*/run.json"):  # as recorded from the dataset class
        path.write_text(json.dumps({**json.loads(path.read_text()), "shot_rule": "oltr"}))
    finished, _ = collect(root, cache=False)
    rules = dict(zip(finished["dataset"], finished["rule"]))
    assert rules == {"synthetic_lt": "oltr", "toy_lt": "strict"}  # toy_lt's records name none: strict


def test_runs_record_their_preset_changes():
    from ltbench.config import preset_changes

    cfg = resolve_config("ce", "synthetic_lt", "smoke", ["stages.train.epochs=7"], seed=5)
    assert preset_changes(cfg) == {"stages.train.epochs": 7}  # the seed is not a variant
    assert preset_changes(resolve_config("ce", "synthetic_lt", "smoke", seed=5)) == {}


def test_other_shot_rule_and_figures(cli, tmp_path):
    # 200 / 50 / 10 images fall in the same groups under the oltr rule
    finished, _ = collect(FIXTURE, rule="oltr")
    assert finished.set_index("run_id").loc["ce0000000000", "many"] == pytest.approx(90.0)
    code, out, _ = cli("report", "--root", str(FIXTURE), "--plots", str(tmp_path / "plots"))
    stems = ["per_class_synthetic_lt_fp-a", "per_class_synthetic_lt_fp-b", "per_class_toy_lt"]
    stems += ["groups_synthetic_lt_fp-a", "groups_synthetic_lt_fp-b", "groups_toy_lt"]
    stems += ["experts_toy_lt_ride_cpu_v-toy-"]  # the only row whose runs store expert heads
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert code == 0 and written == sorted(f"{s}.{e}" for s in stems for e in ("pdf", "png"))
    assert all(p.stat().st_size > 10_000 for p in (tmp_path / "plots").iterdir())


def test_git_revision_selection(cli, tmp_path):
    code, out, _ = cli("report", "--root", str(FIXTURE), "--git", "aaaa")
    assert code == 0 and re.search(r"\| toy_lt +\| ce +\| cpu +\| v-toy- +\| 2/3 +\|", out)  # seed 2 is bbbbbbb
    assert "synthetic_lt | ce" not in out  # records without a git revision are left out
    code, out, _ = cli("report", "--root", str(FIXTURE), "--git", "bbbb", "--format", "csv")
    assert [line.split(",")[:7] for line in out.splitlines() if ",ltbench," in line] == [
        ["toy_lt", "ce", "cpu", "ltbench", "v-toy-ce", "fp-toy", "1"]
    ]
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    parent = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=repo, capture_output=True, text=True).stdout.strip()
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    for run_id, sha in (("toyce0000000", parent), ("toyce0000001", head + "-dirty")):
        path = root / "runs" / "toy_lt" / "ce" / run_id / "run.json"
        path.write_text(path.read_text().replace("a" * 40, sha))
    finished, _ = collect(root)
    from ltbench.report import select_revisions

    kept = select_revisions(finished, since="HEAD")
    assert kept["run_id"].tolist() == ["toyce0000001"]  # HEAD itself counts; HEAD~1 and unknown ones do not
    assert len(select_revisions(finished, since="HEAD~1")) == 2
    code, _, err = cli("report", "--root", str(root), "--since", "no-such-revision")
    assert code == 2 and "not a commit" in err


def test_readable_variants_say_what_differs_from_the_preset(tmp_path):
    from ltbench.config import preset_changes

    root = tmp_path / "results"
    for n, sets in enumerate(([], ["stages.train.epochs=3", "stages.train.optim.lr=0.05"])):
        cfg = resolve_config("ce", "synthetic_lt", "smoke", sets)
        record = {
            "run_id": f"r{n}",
            "variant": cfg.variant_id(),
            "method": "ce",
            "dataset": "synthetic_lt",
            "preset": "smoke",
            "seed": 0,
            "dataset_fingerprint": "fp",
            "train_counts": [5, 1],
            "splits": {"test": {"heads": {"main": {"correct": [1, 1], "total": [2, 2]}}}},
            "config": {**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "root": "/elsewhere", "workers": 8}},
            "changes": preset_changes(cfg),  # as the trainer records it
        }
        (root / "runs" / "synthetic_lt" / "ce" / f"r{n}").mkdir(parents=True)
        (root / "runs" / "synthetic_lt" / "ce" / f"r{n}" / "run.json").write_text(json.dumps(record))
    finished, _ = collect(root)
    labels = sorted(leaderboard(finished)["config"])
    assert labels == ["", "stages.train.epochs=3, stages.train.optim.lr=0.05"]  # paths and workers ignored


def test_parsed_records_are_cached_until_a_record_changes(tmp_path, monkeypatch):
    import ltbench.report.records as report

    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    first, _ = collect(root)
    calls = []
    original = report._parse
    monkeypatch.setattr(report, "_parse", lambda *a: calls.append(a[0]) or original(*a))
    again, _ = collect(root)
    assert calls == [] and again[["run_id", "overall"]].equals(first[["run_id", "overall"]])
    record = root / "runs" / "synthetic_lt" / "ride" / "ride00000000" / "run.json"
    data = json.loads(record.read_text())
    data["splits"]["test"]["heads"]["main"]["correct"] = [8, 7, 7]
    record.write_text(json.dumps(data))
    changed, _ = collect(root)
    assert calls == [str(record)]
    assert changed.set_index("run_id").loc["ride00000000", "overall"] == pytest.approx(220 / 3)


def test_report_writes_a_file_atomically(cli, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURE, root)
    old = os.umask(0o027)
    try:
        code, out, _ = cli("report", "--root", str(root), "--out", str(tmp_path / "board.md"))
    finally:
        os.umask(old)
    assert code == 0 and (tmp_path / "board.md").read_text() == (FIXTURE / "expected.md").read_text()
    # the mode open() would give (0666 less the umask), not the 0600 of the temporary file
    assert stat.S_IMODE((tmp_path / "board.md").stat().st_mode) == 0o640


def test_empty_results(cli, tmp_path):
    code, out, _ = cli("report", "--root", str(tmp_path))
    assert code == 0 and out.startswith("No finished runs.")
    for fmt in ("csv", "json", "html", "latex"):
        assert cli("report", "--root", str(tmp_path), "--format", fmt, "--baseline", "ce", "--compute")[0] == 0


def test_published_rows_with_a_resolution_sit_only_beside_runs_at_that_resolution():
    board = pd.DataFrame({"dataset": ["cifar10_lt", "cifar10_lt"], "method": ["livt", "ride"], "image_size": [0, 0]})
    published = pd.DataFrame(
        {
            "dataset": ["cifar10_lt", "cifar10_lt", "cifar10_lt"],
            "method": ["livt", "livt", "ride"],
            "variant": ["ViT-B at 224 px", "no resolution given", "ResNet-32"],
            "image_size": [224, None, None],
        }
    )
    assert comparable_published(board, published)["variant"].tolist() == ["no resolution given", "ResNet-32"]
    at_224 = board.assign(image_size=[224, 0])
    assert comparable_published(at_224, published)["variant"].tolist() == [
        "ViT-B at 224 px",
        "no resolution given",
        "ResNet-32",
    ]


def cb_board(*rows: tuple[float, int, float]):
    """cb rows on cifar10_lt, one per (imbalance factor, seeds, overall accuracy)."""
    return pd.DataFrame(
        {
            "dataset": "cifar10_lt",
            "method": "cb",
            "preset": "paper",
            "config": "",
            "fingerprint": [f"fp-if{f:g}" for f, _, _ in rows],
            "rule": "strict",
            "image_size": 0,
            "imb_factor": [f for f, _, _ in rows],
            "n": [n for _, n, _ in rows],
            "overall": [acc for _, _, acc in rows],
            **dict.fromkeys(("many", "medium", "few"), math.nan),
        }
    )


CB_PUBLISHED = pd.DataFrame(
    {
        "dataset": "cifar10_lt",
        "method": "cb",
        "variant": ["CB focal, IF 100", "CB focal, IF 50", "no factor given"],
        "overall": [74.57, 79.42, 70.0],
        **dict.fromkeys(("many", "medium", "few"), math.nan),
        "shot_rule": "strict",
        "image_size": math.nan,
        "imb_factor": [100, 50, math.nan],
    }
)


def test_published_rows_with_an_imbalance_factor_sit_only_beside_runs_at_that_factor():
    at_100 = paper_gaps(cb_board((100.0, 3, 72.0)), CB_PUBLISHED)
    assert at_100["variant"].tolist() == ["CB focal, IF 100", "no factor given"]
    assert at_100["gap_overall"].tolist() == pytest.approx([72.0 - 74.57, 72.0 - 70.0])
    at_50 = comparable_published(cb_board((50.0, 3, 80.0)), CB_PUBLISHED)
    assert at_50["variant"].tolist() == ["CB focal, IF 50", "no factor given"]
    # a dataset without an imbalance factor (NaN on the board): the rows that state one are not its
    unknown = comparable_published(cb_board((math.nan, 3, 80.0)), CB_PUBLISHED)
    assert unknown["variant"].tolist() == ["no factor given"]


def test_published_gaps_are_against_the_run_of_the_same_imbalance_factor():
    # the IF-50 row has more seeds, so "most seeds" alone would pair the IF-100 number with it
    both = paper_gaps(cb_board((100.0, 3, 72.0), (50.0, 5, 80.0)), CB_PUBLISHED)
    assert both["vs_fingerprint"].tolist() == ["fp-if100", "fp-if50", "fp-if50"]
    assert both["gap_overall"].tolist() == pytest.approx([72.0 - 74.57, 80.0 - 79.42, 80.0 - 70.0])


def test_the_committed_published_numbers_say_how_each_paper_selected_its_checkpoint():
    """results/published.csv: the official rows whose repository picks the best epoch on the test
    set say so (refs/protocol.md "Model selection in the official repos"); the caption names them."""
    path = Path(__file__).resolve().parents[1] / "results" / "published.csv"
    published = load_published(path, path.parent)
    official = published[published["source"] == "official"]
    by_method = official.groupby("method")["selection"].agg(lambda s: set(s.dropna()))
    for method in ("livt", "deit_lt", "shike"):
        assert by_method[method] == {"best epoch on test"}, method
    ride = official[official["method"] == "ride"].set_index("dataset")["selection"]
    assert set(ride[["cifar100_lt", "inat2018"]]) == {"best epoch on test (val loader = test set)"}
    assert set(ride[["imagenet_lt"]]) == {"best epoch on val, reported on test"}
    # MDCS (second-hand numbers): the official configs' "monitor: max val_accuracy", whose val loader
    # is the test set on CIFAR (cifar_data_loaders.py) and iNat (iNaturalist18_val.txt), and the
    # ImageNet_LT_val / Places_LT_val split on ImageNet-LT and Places-LT (test.py reports on test)
    mdcs = published[published["method"] == "mdcs"].groupby("dataset")["selection"].agg(set)
    assert mdcs.to_dict() == {
        "cifar100_lt": {"best epoch on test (val loader = test set)"},
        "inat2018": {"best epoch on test (val loader = test set)"},
        "imagenet_lt": {"best epoch on val, reported on test"},
        "places_lt": {"best epoch on val, reported on test"},
    }
    other = published[(published["source"] == "second-hand") & (published["method"] != "mdcs")]
    assert other["selection"].isna().all()  # not recorded
    # focal and cb: the class-balanced-loss README figure (its curves' last test evaluation) and the
    # paper's Table 2 (CB hyperparameters by cross-validation; the epoch rule not stated)
    assert set(official[official["method"].isin(["focal", "cb"])]["selection"]) == {
        "last evaluation of the README's TensorBoard curve (test set)",
        "not stated (error on the test set)",
        "loss type, beta and gamma chosen by cross-validation (error on the test set)",
    }


def test_committed_published_rows_that_quote_an_error_rate_give_100_minus_it():
    path = Path(__file__).resolve().parents[1] / "results" / "published.csv"
    published = load_published(path, path.parent)
    quoted = published["variant"].str.extract(r"error (\d+(?:\.\d+)?)", expand=False).dropna()
    assert len(quoted) >= 45  # LiVT's Papers with Code rows, the class-balanced loss paper's Table 2
    for idx, error in quoted.items():
        assert published.at[idx, "overall"] == pytest.approx(100 - float(error), abs=1e-9), published.at[idx, "variant"]


def test_recipe_similarity_by_hand():
    from ltbench.report import recipe_similarity

    row = {"model": {"arch": "a", "width": 1}, "stages": {"bft": {"epochs": 2, "lr": 1.0}}}
    other = {
        "model": {"arch": "b", "width": 1},
        "stages": {"train": {"epochs": 2, "lr": 3.0}, "r": {"epochs": 2, "lr": 1.0}},
    }
    assert recipe_similarity(row, other) == 1 + 2  # width, and the stage `r` (any stage names)
    assert recipe_similarity(row, None) == 0


def test_each_method_is_paired_with_the_ce_row_of_its_own_recipe():
    """`--baseline ce` over ce's cpu, cpu_ride and cpu_vit rows: RIDE and MDCS pair with cpu_ride
    (their 20-epoch step schedule), LiVT and DeiT-LT with cpu_vit (their small ViT), LA and
    LDAM-DRW with cpu (the recipe they add their loss to)."""
    from ltbench.report import recipe_similarity

    def config(method, preset):
        return resolve_config(method, "fmnist_lt", preset).to_dict()

    ces = {preset: config("ce", preset) for preset in ("cpu", "cpu_ride", "cpu_vit")}

    def closest(method, preset):
        mine = config(method, preset)
        scores = {p: recipe_similarity(mine, c) for p, c in ces.items()}
        best = max(scores.values())
        assert list(scores.values()).count(best) == 1, scores  # no tie decides it
        return max(scores, key=scores.get)

    assert closest("ride", "cpu") == closest("mdcs", "cpu") == "cpu_ride"
    assert closest("livt", "cpu") == closest("deit_lt", "cpu") == closest("la", "cpu_vit") == "cpu_vit"
    assert closest("la", "cpu") == closest("ldam_drw", "cpu") == closest("ldam_drw", "cpu_sam") == "cpu"


def test_figures_give_every_row_its_own_colour():
    """matplotlib's default cycle repeats after 10 colours; a leaderboard has more rows than that."""
    from ltbench.report.figures import _colors

    for n in (3, 10, 16, 20, 33):
        assert len(set(_colors(n))) == n


def test_committed_published_rows_give_the_imbalance_factor_their_variant_states():
    """results/published.csv: ``imb_factor`` is the "IF N" of the variant text, empty where the
    text states none (ImageNet-LT, iNat, Places-LT, and RIDE's MODEL_ZOO CIFAR-100-LT rows)."""
    path = Path(__file__).resolve().parents[1] / "results" / "published.csv"
    published = load_published(path, path.parent)
    stated = published["variant"].str.extract(r"\bIF (\d+)\b", expand=False).astype(float)
    assert published["imb_factor"].equals(stated)
    assert published[~published["dataset"].str.startswith("cifar")]["imb_factor"].isna().all()
    assert set(stated.dropna()) == {200, 100, 50, 20, 10}
