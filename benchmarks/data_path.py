"""Images per second of ltbench's file-list data path against a bare torchvision loader.

Both read the same generated tree of JPEGs at ImageNet-like sizes (500x375, ten class folders) and
produce the same training batches' worth of work: PIL decode, RandomResizedCrop(224) + flip,
scaling and normalisation (the same ``torchvision.transforms.v2`` steps), batching, with the same
number of DataLoader workers. ltbench's side is the trainer's own path: a ``folder_lt`` dataset,
its ``rrc_flip`` training recipe and a ``WorkerLoader`` fed one epoch order after another (per-image
seeds, persistent workers). The bare side is ``ImageFolder`` + ``DataLoader(shuffle=True)``.
After one warm-up epoch each, the two alternate (ABBA) for ``--repeats`` rounds of ``--epochs``
epochs, and the median of the rounds is reported (the machine may be shared).

Both sides deliver their batches to ``--device`` (default: CUDA when present). ``--decode gpu`` is
the GPU variant of ltbench's side (``data.decode=gpu``): the workers only read the files, and each
batch is decoded at once by ``torchvision.io.decode_jpeg`` on the device (nvJPEG), then augmented
there and normalised. On a machine without a GPU it runs with torchvision's CPU decoder in the main
process instead, so that the variant can be checked anywhere (its figure then says nothing of nvJPEG).

    python benchmarks/data_path.py [--images 400] [--workers -1] [--batch 64] [--epochs 1] [--repeats 8]
        [--device cuda] [--decode gpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets
from torchvision.transforms import v2

from ltbench.augment import build_recipes
from ltbench.data import WorkerLoader, derive_seed, instance_sampler, job_cpus
from ltbench.registry import DATASETS, load_plugins

SIZE = (500, 375)  # ImageNet's most common image size
CLASSES = 10
IMAGE_SIZE = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_tree(root: Path, images: int) -> None:
    """``images`` photo-like JPEGs (smooth colour fields plus grain, quality 90: about the size of an
    ImageNet JPEG) in ImageFolder layout ``c<k>/<i>.jpg``, listed in ``train.txt`` for folder_lt."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(images):
        label = i % CLASSES
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(SIZE, Image.BICUBIC)
        grain = rng.normal(0, 12, (SIZE[1], SIZE[0], 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        relpath = f"c{label}/{i}.jpg"
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / relpath, "JPEG", quality=90)
        rows.append(f"{relpath} {label}\n")
    (root / "train.txt").write_text("".join(rows))
    (root / "test.txt").write_text("".join(rows[:CLASSES]))


def timed_epochs(batches, first: int, epochs: int, device: torch.device) -> float:
    """Images per second over epochs ``first`` .. ``first + epochs - 1``; ``batches(e)`` iterates epoch e."""
    start, n = time.perf_counter(), 0
    for e in range(first, first + epochs):
        for batch in batches(e):
            n += len(batch[1]) if isinstance(batch, list) else len(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the last batch's copies and kernels count
    return n / (time.perf_counter() - start)


def ltbench_path(root: Path, workers: int, batch: int, device: torch.device, decode: str):
    """The trainer's path (trainer.py `_run_stage`): folder_lt, its training recipe, a WorkerLoader
    reused for every epoch of the stage with the instance sampler's orders and per-epoch seeds."""
    ds = DATASETS.get("folder_lt")()
    data = ds.build(ds.Params(root=str(root), image_size=IMAGE_SIZE))
    recipes = build_recipes(["default"], data, train=True)
    gpu = {"decode": "gpu", "decode_device": device} if decode == "gpu" else {}
    loader = WorkerLoader(data.train, batch, [r.sample for r in recipes], device, workers, **gpu)
    orders = instance_sampler(data.train.labels, data.num_classes, lambda e: torch.Generator().manual_seed(e))
    return (lambda e: loader.epoch(next(orders), derive_seed(0, 0, e, 1, 0))), loader.loader.num_workers


def bare_path(root: Path, workers: int, batch: int, device: torch.device):
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(IMAGE_SIZE, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(MEAN), list(STD)),
        ]
    )
    folder = datasets.ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(
        folder,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    return lambda e: ([x.to(device, non_blocking=True), y.to(device, non_blocking=True)] for x, y in loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=-1, help="-1: ltbench's default for the CPUs here")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode", choices=["cpu", "gpu"], default="cpu", help="ltbench's data.decode")
    args = parser.parse_args()
    device = torch.device(args.device)
    load_plugins()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tree(root, args.images)
        # -1 resolved as the trainer does
        ltbench_batches, workers = ltbench_path(root, args.workers, args.batch, device, args.decode)
        bare_batches = bare_path(root, workers, args.batch, device)
        decoder = {"cpu": "PIL in the workers", "gpu": f"decode_jpeg on {device} (batched)"}[args.decode]
        print(
            f"torch {torch.__version__}, {job_cpus()} CPUs, {workers} workers, {args.images} JPEGs {SIZE[0]}x{SIZE[1]} "
            f"-> {IMAGE_SIZE}, batch {args.batch}, {args.epochs} epochs x {args.repeats} repeats, batches on {device}, "
            f"ltbench decodes with {decoder}"
        )
        timed_epochs(ltbench_batches, 0, 1, device)  # warm-up: workers start, files enter the page cache
        timed_epochs(bare_batches, 0, 1, device)
        ours, bare = [], []
        for r in range(args.repeats):  # ABBA order: a slow drift of the machine's load favours neither
            first = 1 + r * args.epochs
            sides = [(bare, bare_batches), (ours, ltbench_batches)]
            for rates, batches in sides if r % 2 == 0 else sides[::-1]:
                rates.append(timed_epochs(batches, first, args.epochs, device))
        o, b = statistics.median(ours), statistics.median(bare)
        print(f"bare ImageFolder {b:7.1f} img/s | ltbench {o:7.1f} img/s | ltbench/bare {o / b:.3f} (target >= 0.95)")
        paired = statistics.median(o / b for o, b in zip(ours, bare))
        print(f"  median of the per-round ratios {paired:.3f}")
        print(f"  runs: bare {[round(v, 1) for v in bare]}, ltbench {[round(v, 1) for v in ours]}")


if __name__ == "__main__":
    main()
