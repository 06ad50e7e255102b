"""The HTML leaderboard in a real browser (headless Chromium, skipped where none is installed; CI
installs Debian's `chromium`): rendered at 1400 x 2400, it shows its tables and figures, the
screenshot is not blank, and a wide leaderboard fits the window (no horizontal scroll)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "report"
WIDTH, HEIGHT = 1400, 2400
BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed (apt-get install chromium)")

# appended to a copy of the page: what the browser laid out, written into the DOM for --dump-dom
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) { return [i.naturalWidth, i.naturalHeight,
    i.getBoundingClientRect().width]; });
  var out = {images: imgs, tables: document.querySelectorAll('table').length,
             rows: document.querySelectorAll('tbody tr').length,
             scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth};
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}"]
    return subprocess.run([BROWSER, *flags, *args], capture_output=True, text=True, timeout=120)


def render(page: Path, tmp_path: Path) -> tuple[dict, np.ndarray]:
    """(layout measured in the browser, screenshot as an RGB array) of ``page``."""
    probed = tmp_path / f"probed_{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    match = re.search(r"<pre id=\"probe\">(.*?)</pre>", dom.stdout)
    assert match, dom.stderr[-2000:]
    shot = tmp_path / f"{page.stem}.png"
    chromium("--virtual-time-budget=10000", f"--screenshot={shot}", page.as_uri())
    from PIL import Image

    return json.loads(match.group(1).replace("&quot;", '"')), np.asarray(Image.open(shot).convert("RGB"))


def check_page(layout: dict, pixels: np.ndarray, tables: int, images: int) -> None:
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    ink = (pixels < 200).any(axis=2)  # not white nor light grey
    assert 0.02 < ink.mean() < 0.9, ink.mean()  # not blank, not one colour
    assert len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 50  # figures' colours, not only text
    assert layout["tables"] == tables and layout["rows"] > 0
    assert len(layout["images"]) == images and all(w > 0 and h > 0 for w, h, _ in layout["images"])


def test_committed_leaderboard_page_renders(tmp_path):
    page = REPO / "results" / "fmnist_lt.html"
    layout, pixels = render(page, tmp_path)
    shutil.copy(tmp_path / f"{page.stem}.png", tmp_path / "committed.png")
    check_page(layout, pixels, tables=page.read_text().count("<table"), images=page.read_text().count("<img"))


def sixteen_rows(root: Path) -> None:
    """A leaderboard shaped like results/fmnist_lt: one dataset, 16 rows of 3 seeds, long config
    labels, from the fixture's toy_lt ce records with the correct counts shifted per row."""
    source = FIXTURE / "runs" / "toy_lt" / "ce"
    for i in range(16):
        method = ("ce", "la", "ride", "livt")[i % 4]
        for seed in range(3):
            record = json.loads((source / f"toyce000000{seed}" / "run.json").read_text())
            head = record["splits"]["test"]["heads"]["main"]
            head["correct"] = [
                min(t, max(0, c + (i * 7 + seed * 3 + k) % 5 - 2))
                for k, (c, t) in enumerate(zip(head["correct"], head["total"]))
            ]
            record.update(
                run_id=f"r{i:02d}s{seed}",
                seed=seed,
                method=method,
                variant=f"v{i}",
                git_sha="a" * 40,
                changes={"stages.train.epochs": 10 + i, "method.num_experts": i} if i else {},
            )
            (root / "runs" / "toy_lt" / method / record["run_id"]).mkdir(parents=True)
            (root / "runs" / "toy_lt" / method / record["run_id"] / "run.json").write_text(json.dumps(record))


def test_a_wide_leaderboard_fits_the_window(cli, tmp_path, monkeypatch):
    """At 1400 px the leaderboard's few-shot column was cut off: the Δ/p text made every cell long."""
    monkeypatch.setenv("LTBENCH_CACHE", str(tmp_path / "cache"))
    sixteen_rows(tmp_path / "results")
    page = tmp_path / "board.html"
    args = ["--layout", "wide", "--baseline", "ce", "--compute", "--format", "html", "--out", str(page)]
    code, _, err = cli("report", "--root", str(tmp_path / "results"), *args)
    assert code == 0, err
    layout, pixels = render(page, tmp_path)
    check_page(layout, pixels, tables=2, images=2)
    assert layout["rows"] == 32  # 16 leaderboard rows, 16 compute rows
    assert layout["scrollWidth"] <= layout["innerWidth"], layout  # no horizontal scroll
    # figures at their natural size (up to the window's width), not shrunk to a thumbnail
    assert all(shown >= min(w, WIDTH - 100) - 1 for w, _, shown in layout["images"]), layout["images"]
