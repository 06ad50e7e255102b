"""Speed of ``ltbench data info`` on an iNaturalist-2018-sized split: 437,513 training lines.

``data info`` must work from the split files alone in seconds (target: under 5 s for the statistics,
not counting Python's import of torch). The training list is written from the recorded iNaturalist
class counts in ``../shared/data/class_counts/inat2018.json`` (or, without ``../shared``, from an
exponential profile with the same total), with a 24,426-line test list, into a temporary folder.
Reported: the median time of reading and checking the lists (``split_labels``) and of the whole
statistics (``statistics``: plus shot groups), over the repeats.

    python benchmarks/data_info.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics as stats
import tempfile
import time
from pathlib import Path

import numpy as np

from ltbench.cli.data import dataset_params, statistics

SHARED = Path(__file__).resolve().parents[2] / "shared"
TARGET_SECONDS = 5.0


def inat_counts() -> np.ndarray:
    path = SHARED / "data/class_counts/inat2018.json"
    if path.is_file():
        return np.asarray(json.loads(path.read_text())["train_counts"])
    counts = (1000 * (1 / 500) ** (np.arange(8142) / 8141)).astype(int)
    counts[: 437513 - counts.sum()] += 1
    return counts


def write_lists(directory: Path, counts: np.ndarray) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    with open(directory / "iNaturalist18_train.txt", "w") as f:
        f.writelines(f"train_val2018/Plantae/{y}/{i:032x}.jpg {y}\n" for i, y in enumerate(labels.tolist()))
    with open(directory / "iNaturalist18_val.txt", "w") as f:
        f.writelines(f"train_val2018/Plantae/{c}/v{k}.jpg {c}\n" for c in range(len(counts)) for k in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_lists(Path(tmp), inat_counts())
        dataset, params = dataset_params("inat2018", None, [f"data.split_dir={tmp}"])
        read, total = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            labels = dataset.split_labels(params)
            t1 = time.perf_counter()
            result = statistics(labels, dataset)
            t2 = time.perf_counter()
            read.append(t1 - t0)
            total.append(t2 - t0)
    print(
        f"inat2018: {result['train']:,} train lines, {result['test']:,} test lines, "
        f"{result['classes']:,} classes; strict groups {result['shot_groups']['strict']}"
    )
    print(
        f"split_labels: median {stats.median(read):.2f} s; statistics: median {stats.median(total):.2f} s "
        f"(target < {TARGET_SECONDS:.0f} s: {'met' if stats.median(total) < TARGET_SECONDS else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
