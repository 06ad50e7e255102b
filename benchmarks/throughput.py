"""Training throughput of the ltbench trainer against a minimal hand-written PyTorch loop.

Both train the same model (ResNet-8 or the small ViT of the ``ce`` cpu presets) with the same
optimizer and schedule on the same in-memory long-tailed Fashion-MNIST tensors, batch 128. The
hand loop is bare: shuffle, slice, normalise (to the same channels-last layout), forward,
backward, step. The trainer run is the real
``ltbench run`` code path, so its figure includes its data pipeline, augmentation (random crop +
flip), logging, per-epoch checkpoints and one validation pass. Measurements alternate in one
process; the median of the repeats is reported.

    python benchmarks/throughput.py [--epochs 2] [--repeats 3] [--arch resnet8 vit]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from ltbench.augment import channels_last
from ltbench.config import resolve_config
from ltbench.models import create_model, model_kwargs
from ltbench.optim import build_optimizer, effective_lr, param_groups
from ltbench.runner import build_data, train

PRESET = {"resnet8": "cpu", "vit": "cpu_vit"}


def hand_loop(cfg, data, epochs: int) -> float:
    """Images per second of a minimal loop with the trainer's model, optimizer and schedule."""
    torch.manual_seed(0)
    stage = cfg.stages["train"]
    net = create_model(
        cfg.model.arch,
        **model_kwargs(cfg.model, num_classes=data.num_classes, in_chans=data.in_chans, img_size=data.image_size),
    )
    lr = effective_lr(stage.optim, stage.batch_size)
    opt = build_optimizer(param_groups(net.named_parameters(), stage.optim), stage.optim, lr)
    images, labels = data.train.images, torch.from_numpy(data.train.labels)
    steps = -(-len(labels) // stage.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps * epochs)
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    net.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for i in range(steps):
            idx = order[i * stage.batch_size : (i + 1) * stage.batch_size]
            # the trainer's batches are channels-last (faster convolutions); the same layout here
            # keeps the comparison about overhead, not memory layout
            x = channels_last((images[idx].float() / 255 - mean) / std)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return epochs * len(labels) / (time.perf_counter() - start)


def trainer_run(cfg, epochs: int) -> float:
    """Images per second of ``ltbench run`` (training stage wall time, as recorded in run.json)."""
    with tempfile.TemporaryDirectory() as out:
        record = train(cfg, out, progress=False).record
    return epochs * sum(record["train_counts"]) / record["wall_time"]["train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", nargs="+", default=["resnet8", "vit"], choices=sorted(PRESET))
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs x {args.repeats} repeats"
    )
    for arch in args.arch:
        cfg = resolve_config("ce", "fmnist_lt", PRESET[arch], [f"stages.train.epochs={args.epochs}", "eval.every=0"])
        data = build_data(cfg)
        hand, ours = [], []
        for _ in range(args.repeats):
            hand.append(hand_loop(cfg, data, args.epochs))
            ours.append(trainer_run(cfg, args.epochs))
        h, o = statistics.median(hand), statistics.median(ours)
        print(
            f"{arch:>9}: hand loop {h:7.1f} img/s | ltbench trainer {o:7.1f} img/s | "
            f"trainer/hand {o / h:.3f} (overhead {100 * (1 - o / h):+.1f}%)"
        )
        print(f"{'':>9}  runs: hand {[round(v, 1) for v in hand]}, trainer {[round(v, 1) for v in ours]}")


if __name__ == "__main__":
    main()
