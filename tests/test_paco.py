"""PaCo: the loss (by hand and against the official code), the momentum encoder and the queue, the
schedules, the two-view recipes, presets, the paper-scale ResNet-50, runs through the trainer that
resume mid-stage exactly (with and without SAM), and DeiT-LT distilling from a PaCo teacher run.

Reference numbers marked "official" were computed by running the official code
(dvlab-research/Parametric-Contrastive-Learning @ fe56535) outside this repository with this venv's
torch: ``PaCo/LT/losses.PaCoLoss`` (its ``weight`` set to counts / sum as ``cal_weight_for_classes``
does, without the ``.cuda()``) on ``features = cat(q, k, queue)``, and the ``adjust_learning_rate``
functions of ``paco_cifar.py`` and ``paco_lt.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_SYNTHETIC, final_results, long_tailed_info, resolve_registered, stop_at_step, take_step

from ltbench.augment import RECIPES
from ltbench.config import ScheduleConfig, resolve_config
from ltbench.data import Batch
from ltbench.errors import ConfigError
from ltbench.method import DataInfo, StepContext
from ltbench.methods.deit_lt import DeiTLT
from ltbench.methods.paco import PaCo, PaCoLoss
from ltbench.optim import effective_lr, make_schedule
from ltbench.runner import train
from ltbench.trainer import TrainingInterrupted

COUNTS = [50, 20, 10, 5, 2]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the loss


def official_inputs(b: int = 4, d: int = 6, k: int = 8, c: int = 5):
    """Arbitrary, platform-independent inputs: unit queries, keys and queue entries, centre logits."""
    a = torch.arange(b * d, dtype=torch.float64)
    query = F.normalize(torch.sin(a * 1.3 + 0.5).view(b, d).float(), dim=1)
    keys = F.normalize(torch.cos(a * 0.7 - 0.2).view(b, d).float(), dim=1)
    q = torch.arange(k * d, dtype=torch.float64)
    queue = F.normalize(torch.sin(q * 0.37 + 1.1).view(k, d).float(), dim=1)
    s = torch.arange(b * c, dtype=torch.float64)
    centre_logits = (2.0 * torch.sin(s * 0.91 - 0.3)).view(b, c).float()
    return query, keys, queue, centre_logits


# (name, alpha, beta, gamma, temperature, labels, queue labels, official loss, official d/dq, official d/dz)
OFFICIAL = [
    (
        "cifar-script",  # alpha 0.01, T 0.05 (sh/CIFAR100_train_imb0.01.sh)
        0.01,
        1.0,
        1.0,
        0.05,
        [0, 1, 4, 0],
        [0, 2, 4, 1, 0, 3, 1, 4],
        11.117329597473145,
        [
            [2.5889487, 2.2238855, 0.86214101, -0.81042224, -2.0594947, -2.3934391],
            [-1.0742005, -2.68031, -3.0582793, -2.0113485, -0.010320878, 2.0065069],
            [-2.253027, -0.011167843, 2.2076497, 3.0920892, 2.4052172, 0.85465574],
            [0.23531686, 0.55318695, 1.0185699, 1.0529962, 0.2026369, -1.0269212],
        ],
        [
            [-0.23809154, 8.4205258e-06, 9.8671317e-06, 2.4712497e-06, 1.8052886e-07],
            [5.411174e-07, -0.24271825, 4.2454971e-07, 1.1697982e-06, 9.5665541e-07],
            [1.1625521e-05, 8.222886e-07, 1.1229061e-07, 6.4548416e-08, -0.24271834],
            [-0.236706, 0.00098580017, 0.00018869886, 1.6365908e-05, 1.9912084e-06],
        ],
    ),
    (
        "imagenet-script",  # alpha 0.05, T 0.2 (sh/ImageNetLT_train_R50.sh)
        0.05,
        1.0,
        1.0,
        0.2,
        [3, 1, 1, 2],
        [1, 1, 0, 2, 3, 4, 2, 1],
        5.037021636962891,
        [
            [0.56922936, 0.39119944, 0.10780096, -0.075565562, -0.16251148, -0.25954419],
            [-0.089396559, -0.15190814, -0.29696068, -0.29753542, 0.017874405, 0.45599186],
            [-0.47142896, -0.070986263, 0.32231885, 0.42306322, 0.29263008, 0.19003224],
            [-0.0043210769, -0.051286899, 0.034682162, 0.10632945, -0.003046032, -0.21075553],
        ],
        [
            [0.0019432105, 0.0044141975, 0.0051725428, -0.22597724, 9.4636707e-05],
            [0.00081363076, -0.19198649, 0.00063835783, 0.0017589229, 0.0014384367],
            [0.013071032, -0.19138318, 0.00012625294, 7.2574367e-05, 0.00012613778],
            [0.022342566, 0.015854036, -0.21435659, 0.0002632034, 3.2023421e-05],
        ],
    ),
    (
        "other-weights",  # beta and gamma away from 1
        0.3,
        0.7,
        0.5,
        0.1,
        [2, 2, 4, 0],
        [2, 0, 4, 4, 1, 3, 2, 2],
        4.726165294647217,
        [
            [0.77161831, 0.82237011, 0.4645271, -0.33390427, -1.0463705, -1.0613316],
            [-0.88948631, -1.7454604, -1.5899528, -0.70495486, 0.27175233, 1.0241297],
            [-1.0860142, -0.024545299, 0.94855314, 1.2221612, 0.79240274, 0.11796644],
            [-0.03498403, 0.080720365, 0.43270567, 0.68646044, 0.49755013, 0.0011862442],
        ],
        [
            [0.00059920322, 0.0013611509, -0.06840501, 0.00039946995, 2.9181938e-05],
            [0.00019952362, 7.8779536e-05, -0.069843456, 0.00043133408, 0.00035274265],
            [0.0034398257, 0.00024330345, 3.322522e-05, 1.9098956e-05, -0.10934182],
            [-0.11511747, 0.013835517, 0.0026483501, 0.00022969261, 2.7946229e-05],
        ],
    ),
]


@pytest.mark.parametrize(
    "name,alpha,beta,gamma,t,labels,queue_labels,value,g_query,g_centres", OFFICIAL, ids=[c[0] for c in OFFICIAL]
)
def test_loss_equals_the_official_code_in_value_and_gradient(
    name, alpha, beta, gamma, t, labels, queue_labels, value, g_query, g_centres
):
    query, keys, queue, centre_logits = official_inputs()
    query.requires_grad_(True)
    centre_logits.requires_grad_(True)
    loss = PaCoLoss(COUNTS, alpha, beta, gamma, t)(
        query, keys, queue, torch.tensor(queue_labels), torch.tensor(labels), centre_logits
    )
    loss.backward()
    assert loss.item() == pytest.approx(value, abs=1e-5)
    torch.testing.assert_close(query.grad, torch.tensor(g_query), atol=1e-5, rtol=0)
    torch.testing.assert_close(centre_logits.grad, torch.tensor(g_centres), atol=1e-5, rtol=0)


def test_loss_by_hand():
    # one query q = (1) of class 0, its key (1) of class 0, one queue entry (-1) of class 1; two
    # classes of equal count (log pi = log 1/2 each), centre logits 0, T = 1, gamma = 1
    loss = PaCoLoss([3, 3], alpha=0.25, beta=1.0, gamma=1.0, temperature=1.0)
    one = torch.ones(1, 1)
    value = loss(one, one, -one, torch.tensor([1]), torch.tensor([0]), torch.zeros(1, 2))
    denominator = 2 * 0.5 + math.e + math.exp(-1)  # both centres, the key, the queue entry; not the query itself
    log_centre, log_key = math.log(0.5) - math.log(denominator), 1 - math.log(denominator)
    assert value.item() == pytest.approx(-(log_centre + 0.25 * log_key) / 1.25, rel=1e-6)
    # gamma scales the samples in the denominator only; alpha = 0 leaves the centre term alone
    value = PaCoLoss([3, 3], alpha=0.0, beta=1.0, gamma=0.5, temperature=1.0)(
        one, one, -one, torch.tensor([1]), torch.tensor([0]), torch.zeros(1, 2)
    )
    expected = -(math.log(0.5) - math.log(1 + 0.5 * (math.e + math.exp(-1))))
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # the centre logits are adjusted by log(pi + 1e-9), pi the training class frequencies
    skewed = PaCoLoss([3, 1], alpha=0.0, temperature=1.0)
    torch.testing.assert_close(skewed.log_prior, torch.log(torch.tensor([0.75, 0.25]) + 1e-9))


# ----------------------------------------------------------------------------- the method

INFO = DataInfo(num_classes=5, in_chans=3, image_size=16, train_counts=np.array(COUNTS))


def smoke(*sets: str):
    return resolve_config("paco", "synthetic_lt", "smoke", list(sets))


def build(*sets: str, info: DataInfo = INFO) -> PaCo:
    torch.manual_seed(0)
    return PaCo(smoke(*sets), info)


def step_batch(b: int = 32, seed: int = 1) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x_q, x_k = torch.randn(b, 3, 16, 16, generator=gen), torch.randn(b, 3, 16, 16, generator=gen)
    return Batch([x_q, x_k], torch.arange(b) % 5, torch.arange(b))


def test_the_model_holds_both_encoders_the_queue_and_the_centres():
    method = build()
    state = method.state_dict()
    assert {"queue", "queue_labels", "queue_ptr", "centres.weight", "centres.bias"} <= set(state)
    assert any(k.startswith("encoder_k.") for k in state) and any(k.startswith("encoder_q.head.") for k in state)
    assert method.queue.shape == (64, 16) and method.queue_labels.max() < 5
    # the official initial queue: each column (not row) has unit norm
    torch.testing.assert_close(method.queue.norm(dim=0), torch.ones(16))
    assert not any(p.requires_grad for p in method.encoder_k.parameters())
    for k, q in zip(method.encoder_k.parameters(), method.encoder_q.parameters()):
        assert torch.equal(k, q)  # the key encoder starts as a copy
    trained = {id(p) for g in method.param_groups("train", method.cfg.stages["train"].optim) for p in g["params"]}
    assert trained == {id(p) for n, p in method.named_parameters() if not n.startswith("encoder_k.")}
    head = method.encoder_q.head  # MoCo v2 head: Linear-BN-ReLU-Linear to moco_dim
    kinds = ["Linear" if isinstance(m, torch.nn.Linear) else type(m).__name__ for m in head]  # FP32Linear too
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"] and head[3].out_features == 16
    method.eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(method.predict(x), method.centres(method.encoder_q(x)[0]))
    assert method.centres.in_features == 64  # ResNet-8's pooled features, as the official feat_dim


def test_a_step_updates_the_key_encoder_by_momentum_then_enqueues_once():
    method = build("method.momentum=0.9")
    before_k = [p.clone() for p in method.encoder_k.parameters()]
    with torch.no_grad():  # make the two encoders differ
        for p in method.encoder_q.parameters():
            p.add_(0.5)
    queue_before = method.queue.clone()
    batch = step_batch()
    method.train()
    keys, queue, queue_labels = method.keys_and_queue(batch.views[1], batch.y)
    for k, k0, q in zip(method.encoder_k.parameters(), before_k, method.encoder_q.parameters()):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q)  # MoCo Eq. 2
    torch.testing.assert_close(queue, queue_before)  # the loss sees the queue before this batch
    torch.testing.assert_close(method.queue[:32], keys)
    torch.testing.assert_close(method.queue[32:], queue_before[32:])
    assert torch.equal(method.queue_labels[:32], batch.y) and int(method.queue_ptr) == 32
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(32))
    # SAM's second pass on the same batch: the same keys and queue, no second update or enqueue
    k_params = [p.clone() for p in method.encoder_k.parameters()]
    again = method.keys_and_queue(batch.views[1], batch.y)
    assert all(a is b for a, b in zip(again, (keys, queue, queue_labels)))
    assert all(torch.equal(a, b) for a, b in zip(k_params, method.encoder_k.parameters()))
    assert int(method.queue_ptr) == 32
    # the next batch wraps the pointer around K = 64
    nxt = step_batch(seed=2)
    method.keys_and_queue(nxt.views[1], nxt.y)
    assert int(method.queue_ptr) == 0 and torch.equal(method.queue_labels[32:], nxt.y)


def test_train_step_is_the_paco_loss_of_the_queries_keys_queue_and_centres():
    method = build()
    reference = build()  # same initial weights and queue
    batch = step_batch()
    method.train()
    reference.train()
    out = method.train_step(batch, StepContext("train", 1, 2, 0, 1))
    features, query = reference.encoder_q(batch.views[0])
    keys, queue, labels = reference.keys_and_queue(batch.views[1], batch.y)
    expected = reference.criterion(query, keys, queue, labels, batch.y, reference.centres(features))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert method.centres.weight.grad.abs().sum() > 0 and method.encoder_q.head[0].weight.grad.abs().sum() > 0


def test_bad_views_or_queue_sizes_are_clear_errors():
    with pytest.raises(ConfigError, match="two recipes"):
        build("stages.train.augment=pad_crop_flip")
    with pytest.raises(ConfigError, match="multiple of"):
        build("method.queue_size=48")
    with pytest.raises(ConfigError, match="drop_last"):
        build("stages.train.drop_last=false")
    with pytest.raises(ConfigError, match="ResNet backbone"):
        build("model.arch=vit")


# ----------------------------------------------------------------------------- schedules


def _lrs(name: str, lr: float, epochs: int, at: list[int], **fields) -> list[float]:
    schedule = make_schedule(ScheduleConfig(name=name, per="epoch", **fields), lr, 1, epochs)
    return [schedule(e) for e in at]


def test_schedules_equal_the_official_adjust_learning_rate():
    # official paco_cifar.py, lr 0.05, warmup 10: epoch 10 runs at 1.1 lr (`epoch <= warmup_epochs`)
    epochs = [0, 9, 10, 11, 320, 321, 360, 361, 399]
    official = [0.005, 0.05, 0.055, 0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005]
    got = _lrs("paco_step", 0.05, 400, epochs, warmup_epochs=10, milestones=[321, 361], gamma=0.1)
    assert got == pytest.approx(official, rel=1e-9)
    # official paco_lt.py, lr 0.02, warmup 10, 400 epochs, --cos
    epochs = [0, 9, 10, 11, 200, 399]
    official = [0.002, 0.02, 0.019999677214588313, 0.019998708879191335, 0.010361485598921211, 3.2278541168717647e-07]
    assert _lrs("paco_cosine", 0.02, 400, epochs, warmup_epochs=10) == pytest.approx(official, rel=1e-9)


# ----------------------------------------------------------------------------- views


# paco_lt.py: rgb_mean = (0.485, 0.456, 0.406), img_mean = round(255 x) = (123.675, 116.28, 103.53)
# rounded, for ImageNet-LT and iNat alike
IMAGENET_MEAN_PIXEL = (124, 116, 104)


@pytest.mark.parametrize(
    "recipe,between",
    [
        # augmentation_randncls: crop, flip, jitter (always), RandAugment
        ("rrc_jitter_randaug_imagenet_fill", []),
        # augmentation_randnclsstack: the same with grayscale and blur before RandAugment
        ("rrc_jitter_gray_blur_randaug_imagenet_fill", [("RandomGrayscale", 0.2), ("blur", 0.5)]),
    ],
)
def test_the_randaugment_query_views_fill_with_imagenets_mean_pixel_on_inat(recipe, between):
    from types import SimpleNamespace

    from PIL import Image
    from torchvision.transforms import v2

    from ltbench.augment import RandomGaussianBlur
    from ltbench.filelists import INAT_MEAN, INAT_STD

    inat = SimpleNamespace(image_size=32, mean=INAT_MEAN, std=INAT_STD)
    steps = RECIPES.get(recipe)(inat).sample.transforms[1:-1]  # between the PIL conversion and ToImage
    crop, flip, jitter, *middle, randaug = steps
    assert isinstance(crop, v2.RandomResizedCrop) and tuple(crop.scale) == (0.08, 1.0)
    assert isinstance(flip, v2.RandomHorizontalFlip)
    assert isinstance(jitter, v2.ColorJitter) and jitter.brightness == (0.6, 1.4) and jitter.hue is None
    seen = []
    for step in middle:
        if isinstance(step, v2.RandomApply):
            (inner,) = step.transforms
            assert isinstance(inner, RandomGaussianBlur) and inner.sigma == (0.1, 2.0)
            seen.append(("blur", step.p))
        else:
            seen.append((type(step).__name__, step.p))
    assert seen == between
    # rand-n2-m10-mstd0.5 over timm's 15 operations, as the official list
    assert randaug.num_layers == 2 and len(randaug.ops) == 15
    assert all(op.magnitude == 10 and op.magnitude_std == 0.5 for op in randaug.ops)
    assert {op.kwargs["fillcolor"] for op in randaug.ops} == {IMAGENET_MEAN_PIXEL}
    # the area a translation moves in is that pixel (the dataset-mean recipe would fill (119, 120, 97))
    (translate,) = [op for op in randaug.ops if op.name == "TranslateXRel"]
    shifted = translate.aug_fn(Image.new("RGB", (8, 8)), 0.5, **translate.kwargs)
    assert shifted.getpixel((7, 0)) == IMAGENET_MEAN_PIXEL and shifted.getpixel((0, 0)) == (0, 0, 0)
    own = RECIPES.get("rrc_jitter_randaug")(inat).sample.transforms[-2]
    assert {op.kwargs["fillcolor"] for op in own.ops} == {(119, 120, 97)}
    with pytest.raises(ConfigError, match="RGB"):
        RECIPES.get(recipe)(SimpleNamespace(image_size=32, mean=(0.5,), std=(0.25,)))


@pytest.mark.parametrize("recipe", ["simclr_cifar", "simclr_imagenet"])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_simclr_key_views_are_seeded_per_image(recipe, channels):
    from types import SimpleNamespace

    data = SimpleNamespace(image_size=24, mean=(0.5,) * channels, std=(0.25,) * channels)
    sample = RECIPES.get(recipe)(data).sample
    image = torch.randint(0, 256, (channels, 32, 32), dtype=torch.uint8)
    torch.manual_seed(3)
    a = sample(image)
    torch.manual_seed(3)
    b = sample(image)
    c = sample(image)
    assert a.shape == (channels, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("dataset", ["cifar10_lt", "cifar100_lt"])
def test_cifar_paper_preset_follows_the_official_script(dataset):
    cfg = resolve_registered("paco", dataset, "paper")
    s, m = cfg.stages["train"], cfg.method
    assert cfg.model.arch == "resnet32" and (s.epochs, s.batch_size, s.drop_last) == (400, 128, True)
    assert (s.optim.name, s.optim.lr, s.optim.momentum, s.optim.nesterov) == ("sgd", 0.05, 0.9, False)
    assert s.optim.weight_decay == 5e-4 and not s.optim.no_decay_1d
    assert (s.schedule.name, s.schedule.warmup_epochs, s.schedule.milestones) == ("paco_step", 10, [321, 361])
    assert s.augment == ["autoaug_cutout", "simclr_cifar"]
    assert (m.moco_dim, m.queue_size, m.momentum, m.temperature) == (32, 1024, 0.999, 0.05)
    assert (m.alpha, m.beta, m.gamma, m.mlp) == (0.01, 1.0, 1.0, True)
    assert cfg.train.precision == "fp32"  # paco_cifar.py trains in fp32


@pytest.mark.parametrize("dataset,wd", [("imagenet_lt", 5e-4), ("inat2018", 1e-4)])
def test_large_paper_presets_follow_the_official_scripts(dataset, wd):
    cfg = resolve_registered("paco", dataset, "paper")
    s, m = cfg.stages["train"], cfg.method
    assert cfg.model.arch == "resnet50" and (s.epochs, s.batch_size, s.drop_last) == (400, 128, True)
    assert effective_lr(s.optim, s.batch_size) == 0.02 and s.optim.weight_decay == wd and not s.optim.nesterov
    assert s.optim.momentum == 0.9 and not s.optim.no_decay_1d  # torch.optim.SGD(model.parameters(), ...)
    assert (s.schedule.name, s.schedule.per, s.schedule.warmup_epochs) == ("paco_cosine", "epoch", 10)
    # --aug randcls_sim; RandAugment fills with ImageNet's mean pixel on iNat too
    assert s.augment == ["rrc_jitter_randaug_imagenet_fill", "simclr_imagenet"]
    assert cfg.eval.augment == "resize_center_crop"
    assert (m.moco_dim, m.queue_size, m.temperature, m.alpha, m.beta, m.gamma) == (128, 8192, 0.2, 0.05, 1.0, 1.0)
    assert cfg.train.precision == "fp32"  # paco_lt.py's autocast needs --fp16, which these scripts do not pass
    if dataset == "inat2018":
        assert tuple(cfg.data.mean) == (0.466, 0.471, 0.380) and tuple(cfg.data.std) == (0.195, 0.194, 0.192)


def test_x50_paper_preset_follows_the_official_script():
    # sh/ImageNetLT_train_X50.sh: --arch resnext50_32x4d --lr 0.02 --moco-t 0.07 --wd 5e-4 --alpha 0.05
    # --beta 1.0 --gamma 1.0 --aug randclsstack_sim --randaug_m 10 --randaug_n 2 --epochs 400; the
    # rest paco_lt.py's defaults (batch 128, moco dim 128, K 8192, m 0.999, mlp, warmup 10, cosine)
    cfg = resolve_registered("paco", "imagenet_lt", "paper_x50")
    s, m = cfg.stages["train"], cfg.method
    assert cfg.model.arch == "resnext50" and (s.epochs, s.batch_size, s.drop_last) == (400, 128, True)
    assert effective_lr(s.optim, s.batch_size) == 0.02 and s.optim.weight_decay == 5e-4 and not s.optim.nesterov
    assert s.optim.momentum == 0.9 and not s.optim.no_decay_1d and s.optim.sam_rho == 0.0
    assert (s.schedule.name, s.schedule.per, s.schedule.warmup_epochs) == ("paco_cosine", "epoch", 10)
    assert s.augment == ["rrc_jitter_gray_blur_randaug_imagenet_fill", "simclr_imagenet"]
    assert cfg.eval.augment == "resize_center_crop"
    assert (m.moco_dim, m.queue_size, m.momentum, m.temperature) == (128, 8192, 0.999, 0.07)
    assert (m.alpha, m.beta, m.gamma, m.mlp) == (0.05, 1.0, 1.0, True)
    assert cfg.train.precision == "fp32"  # no --fp16


def test_paper_sam_adds_the_saddle_longtail_radius_of_the_same_backbone():
    cifar = resolve_registered("paco", "cifar100_lt", "paper_sam").stages["train"].optim
    assert cifar.sam_rho == 0.8 and cifar.sam_rho_milestones == []
    large = resolve_registered("paco", "imagenet_lt", "paper_sam").stages["train"].optim
    assert (large.sam_rho, large.sam_rho_milestones, large.sam_rho_values) == (0.05, [22, 267, 333], [0.1, 0.5, 0.5])
    plain = resolve_registered("paco", "imagenet_lt", "paper")
    assert resolve_registered("paco", "imagenet_lt", "paper_sam").stages["train"].epochs == 400 == plain.stages[
        "train"
    ].epochs and (plain.stages["train"].optim.sam_rho == 0.0)


def test_cpu_preset_has_the_backbone_and_budget_of_the_ce_cpu_row():
    cfg = resolve_registered("paco", "fmnist_lt", "cpu")
    ce = resolve_registered("ce", "fmnist_lt", "cpu")
    s, c = cfg.stages["train"], ce.stages["train"]
    assert cfg.model.arch == ce.model.arch == "resnet8"
    assert (s.epochs, s.batch_size, s.optim) == (c.epochs, c.batch_size, c.optim)
    one_cycle = ("name", "per", "pct_start", "div_factor", "final_div_factor")  # the fields one-cycle reads
    assert [getattr(s.schedule, f) for f in one_cycle] == [getattr(c.schedule, f) for f in one_cycle]
    assert s.augment[0] == c.augment[0] and cfg.method.queue_size % s.batch_size == 0
    assert resolve_registered("paco", "fmnist_lt", "cpu_sam").stages["train"].optim.sam_rho == 0.05


# ----------------------------------------------------------------------------- the paper-scale model


# backbones without fc: ResNet-50 23,508,032; ResNeXt-50 32x4d torchvision's documented 25,028,904 less its
# fc 2048x1000+1000 (by hand: the stem 9,408 + 128, then per block, width w = 2 x planes and 32 groups,
# in.w + w.w/32.9 + w.out, BN 2w + 2w + 2out)
@pytest.mark.slow
@pytest.mark.parametrize(("preset", "backbone"), [("paper", 23_508_032), ("paper_x50", 22_979_904)])
def test_paper_scale_model_builds_and_trains_one_step(preset, backbone):
    cfg = resolve_config("paco", "imagenet_lt", preset)
    torch.manual_seed(0)
    method = PaCo(cfg, long_tailed_info(1000, 224))
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    # + head 2048x2048+2048, BN 2x2048, 2048x128+128 + centres 2048x1000+1000
    assert trainable == backbone + 4_196_352 + 4_096 + 262_272 + 2_049_000
    assert method.queue.shape == (8192, 128)
    x = torch.randn(2, 3, 64, 64)  # small images: the same layers, a fraction of the time
    batch = Batch([x, x.flip(-1)], torch.tensor([0, 999]), torch.arange(2))
    take_step(method, "train", batch, epoch=1, epochs=400)
    assert method.centres.weight.grad.abs().sum() > 0 and int(method.queue_ptr) == 2
    method.eval()
    assert method.predict(x[:1]).shape == (1, 1000)


def _uniform_bound_fits(t: torch.Tensor, bound: float) -> bool:
    """PyTorch's default ``nn.Linear`` initialisation: U(-bound, bound), so |t| <= bound and std
    bound / sqrt(3), within four standard errors of a sample std of n uniform draws (sqrt(0.2 / n)
    relative: the uniform's kurtosis is 1.8)."""
    relative = t.std().item() / (bound / math.sqrt(3)) - 1
    return t.abs().max() <= bound and abs(relative) < 4 * math.sqrt(0.2 / t.numel())


# (preset, dataset, classes, pooled width F, moco dim, whether the head's last layer is Kaiming-normal)
BACKBONES = [
    ("paper", "cifar100_lt", 100, 64, 32, True),  # ResNet_s: self.apply(_weights_init) covers its fc
    ("paper", "imagenet_lt", 1000, 2048, 128, False),  # torchvision: fc keeps nn.Linear's default
    ("paper_x50", "imagenet_lt", 1000, 2048, 128, False),
]


@pytest.mark.parametrize(
    "preset,dataset,classes,width,dim,kaiming", BACKBONES, ids=["resnet32", "resnet50", "resnext50"]
)
def test_the_encoders_head_and_centres_are_the_official_builders(preset, dataset, classes, width, dim, kaiming):
    """moco/builder.py ``MoCo(base_encoder, dim, ..., mlp=True, feat_dim, num_classes)``: each
    encoder is ``base_encoder(num_classes=dim)`` whose ``fc`` becomes Linear(F, F)-BN-ReLU-fc, the
    old fc (and its initialisation) last; ``linear`` = Linear(feat_dim, num_classes) with PyTorch's
    default initialisation; the key encoder starts as a parameter copy and takes no gradient."""
    torch.manual_seed(0)
    method = PaCo(resolve_config("paco", dataset, preset), long_tailed_info(classes, 32))
    head = method.encoder_q.head
    first, bn, _, last = head
    assert (first.in_features, first.out_features, bn.num_features) == (width, width, width)
    assert (last.in_features, last.out_features) == (width, dim) and isinstance(head[2], torch.nn.ReLU)
    assert (method.centres.in_features, method.centres.out_features) == (width, classes)
    bound = 1 / math.sqrt(width)
    assert _uniform_bound_fits(first.weight, bound) and _uniform_bound_fits(first.bias, bound)
    assert torch.equal(bn.weight, torch.ones(width)) and torch.equal(bn.bias, torch.zeros(width))
    assert _uniform_bound_fits(method.centres.weight, bound) and _uniform_bound_fits(method.centres.bias, bound)
    if kaiming:  # kaiming_normal_: N(0, 2 / fan_in); the bias keeps the default
        assert abs(last.weight.std().item() / math.sqrt(2 / width) - 1) < 0.1 and last.weight.abs().max() > bound
    else:
        assert _uniform_bound_fits(last.weight, bound)
    assert last.bias.abs().max() <= bound
    for k, q in zip(method.encoder_k.state_dict().values(), method.encoder_q.state_dict().values()):
        assert torch.equal(k, q)
    assert not any(p.requires_grad for p in method.encoder_k.parameters())
    method.eval()
    features, query = method.encoder_q(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, width) and query.shape == (2, dim)  # feat_after_avg; the projection
    torch.testing.assert_close(query.norm(dim=1), torch.ones(2))


# ----------------------------------------------------------------------------- runs through the trainer


def small(*sets: str):
    return smoke(*SMALL_SYNTHETIC, *sets)


def test_smoke_run_is_deterministic(tmp_path):
    a = train(small(), tmp_path / "a", progress=False).record
    b = train(small(), tmp_path / "b", progress=False).record
    assert final_results(a) == final_results(b)
    assert sum(a["splits"]["test"]["heads"]["main"]["total"]) == 60


@pytest.mark.parametrize("sam", [False, True], ids=["plain", "sam"])
def test_resume_in_the_middle_of_the_stage_gives_the_same_result(tmp_path, sam):
    sets = ("stages.train.optim.sam_rho=0.05",) if sam else ()
    cfg = small(*sets, "method.queue_size=96")  # 159 images, batch 32, drop_last: 4 steps per epoch
    reference = train(cfg, tmp_path / "reference", progress=False)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "stopped", progress=False, on_trainer=stop_at_step(2))  # queue_ptr 64
    saved = torch.load(reference.run.checkpoint, map_location="cpu", weights_only=False)["model"]
    assert {"queue", "queue_labels", "queue_ptr"} <= set(saved) and any(k.startswith("encoder_k.") for k in saved)
    assert int(saved["queue_ptr"]) == (8 * 32) % 96  # one enqueue per step, SAM or not
    resumed = train(cfg, tmp_path / "stopped", progress=False)
    assert resumed.record["resumes"] == 1
    assert final_results(resumed.record) == final_results(reference.record)


# ----------------------------------------------------------------------------- DeiT-LT's PaCo teacher


def test_deit_lt_requires_a_paco_teacher_when_asked():
    cfg = resolve_config("deit_lt", "cifar100_lt", "paper_paco", seed=2)
    teacher = DeiTLT.requires(cfg)["teacher"]
    assert (teacher.method_name, teacher.preset, teacher.seed) == ("paco", "paper_sam", 0)
    assert teacher.stages["train"].optim.sam_rho == 0.8 and teacher.data.image_size == 0  # 32 px
    default = resolve_config("deit_lt", "cifar100_lt", "paper")
    assert default.method.teacher == "ldam_drw" and DeiTLT.requires(default)["teacher"].method_name == "ldam_drw"
    for dataset in ("cifar10_lt", "imagenet_lt", "inat2018"):
        paco = resolve_config("deit_lt", dataset, "paper_paco")
        assert paco.method.teacher == "paco" and paco.stages == resolve_config("deit_lt", dataset, "paper").stages
    cpu = resolve_config("deit_lt", "fmnist_lt", "cpu", ["method.teacher=paco"])
    assert DeiTLT.requires(cpu)["teacher"].stages["train"].optim.sam_rho == 0.05  # paco cpu_sam


def test_deit_lt_trains_its_paco_teacher_first_and_distils_from_its_centres(tmp_path):
    cfg = resolve_config("deit_lt", "synthetic_lt", "smoke", [*SMALL_SYNTHETIC, "method.teacher=paco"])
    result = train(cfg, tmp_path, progress=False)
    record = result.record["teachers"]["teacher"]
    assert record["method"] == "paco" and record["preset"] == "smoke"
    teacher_cfg = DeiTLT.requires(cfg)["teacher"]
    assert record["run_id"] == teacher_cfg.run_id()
    assert (tmp_path / "runs" / "synthetic_lt" / "paco" / teacher_cfg.run_id() / "run.json").is_file()
    # the student's teacher is the PaCo run's supervised classifier on the query features
    from ltbench.runner import build_data, load_teachers

    teachers = load_teachers(cfg, build_data(cfg), torch.device("cpu"), tmp_path).modules
    paco = teachers["teacher"]
    assert isinstance(paco, PaCo) and not paco.training
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(paco.predict(x), paco.centres(paco.encoder_q.backbone(x)))


@pytest.mark.slow
def test_two_ddp_ranks_enqueue_the_keys_of_both(tmp_path):
    """Two gloo ranks of 16 images: the keys are encoded across ranks (shuffled BN) and every
    step enqueues the global batch of 32, as the official ``concat_all_gather``."""
    from test_ddp import run_ranks

    sets = [*SMALL_SYNTHETIC, "method.queue_size=96"]
    assert run_ranks(tmp_path, method="paco", preset="smoke", sets=sets) == [0, 0]
    cfg = smoke(*sets)
    run = train(cfg, tmp_path, progress=False).run  # finished: read back, not retrained
    assert run.read_record()["world_size"] == 2
    saved = torch.load(run.checkpoint, map_location="cpu", weights_only=False)["model"]
    # 159 images padded to 80 per rank: 5 batches of 16 per rank and epoch, 2 epochs, 32 keys a step
    assert int(saved["queue_ptr"]) == (2 * 5 * 32) % 96


# ----------------------------------------------------------------------------- official checkpoints

# the official MoCo(ResNet_s [1, 1, 1], dim 8, K 16, mlp, feat_dim 64, 5 classes): each encoder's
# state-dict entries (a BatchNorm name stands for its five), then the module's own
OFFICIAL_ENCODER = [
    ("conv1.weight", (16, 3, 3, 3)),
    ("bn1", 16),
    *[
        entry
        for layer, (cin, cout) in enumerate([(16, 16), (16, 32), (32, 64)], start=1)
        for entry in (
            (f"layer{layer}.0.conv1.weight", (cout, cin, 3, 3)),
            (f"layer{layer}.0.bn1", cout),
            (f"layer{layer}.0.conv2.weight", (cout, cout, 3, 3)),
            (f"layer{layer}.0.bn2", cout),
        )
    ],
    ("fc.0.weight", (64, 64)),
    ("fc.0.bias", (64,)),
    ("fc.1", 64),
    ("fc.3.weight", (8, 64)),
    ("fc.3.bias", (8,)),
]
OFFICIAL_REST = [
    ("linear.weight", (5, 64)),
    ("linear.bias", (5,)),
    ("linear_k.weight", (5, 64)),
    ("linear_k.bias", (5,)),
]
# official ``model.eval()(x)`` (``_inference``: linear(feat_after_avg_q)) with the weights below
OFFICIAL_LOGITS = [
    [-0.26583439111709595, 0.6712512373924255, 0.13422712683677673, -0.9636520147323608, -0.6756831407546997],
    [-0.26844722032546997, 0.6831204891204834, 0.13963592052459717, -0.9742470979690552, -0.6835877895355225],
]


def _official_value(name: str, shape: tuple) -> torch.Tensor:
    """Deterministic weights from the entry's name: 0.2 sin(0.37 i + phase), variances 1 + 0.5 sin^2."""
    v = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 0.37 + sum(map(ord, name)) % 97)
    return (1 + 0.5 * v * v if name.endswith("running_var") else 0.2 * v).reshape(shape).float()


def official_checkpoint() -> dict:
    entries = []
    for prefix in ("encoder_q.", "encoder_k."):
        for name, shape in OFFICIAL_ENCODER:
            if isinstance(shape, int):  # BatchNorm
                stats = ("weight", "bias", "running_mean", "running_var")
                entries += [(f"{prefix}{name}.{s}", (shape,)) for s in stats]
                entries.append((f"{prefix}{name}.num_batches_tracked", None))
            else:
                entries.append((prefix + name, shape))
    state = {k: torch.tensor(3) if s is None else _official_value(k, s) for k, s in entries + OFFICIAL_REST}
    phase = sum(map(ord, "queue_l")) % 97
    state |= {
        "queue": _official_value("queue", (16, 8)),
        "queue_l": (torch.arange(16) * 7 + phase).remainder(5),
        "queue_ptr": torch.tensor([4]),
    }
    return {"epoch": 400, "state_dict": {f"module.{k}": v for k, v in state.items()}}  # DDP's prefix


OFFICIAL_SIZES = ["method.moco_dim=8", "method.queue_size=16", "stages.train.batch_size=16"]


def test_an_official_checkpoint_loads_and_predicts_as_the_official_model():
    cfg = resolve_config("paco", "synthetic_lt", "smoke", OFFICIAL_SIZES)
    method = PaCo(cfg, INFO)
    method.load_state_dict(official_checkpoint())
    method.eval()
    x = 0.5 * torch.sin(torch.arange(2 * 3 * 16 * 16, dtype=torch.float64) * 0.11).reshape(2, 3, 16, 16).float()
    torch.testing.assert_close(method.predict(x), torch.tensor(OFFICIAL_LOGITS), atol=1e-5, rtol=0)
    assert int(method.queue_ptr) == 4
    assert torch.equal(method.queue_labels, official_checkpoint()["state_dict"]["module.queue_l"])
    method.load_state_dict(method.state_dict())  # ltbench's own layout still loads
    reindexed = resolve_config("paco", "imagenet_lt", "smoke", OFFICIAL_SIZES)
    reindexed.data.reindex = True
    with pytest.raises(ConfigError, match="data.reindex"):
        PaCo(reindexed, INFO).load_state_dict(official_checkpoint())


def test_deit_lt_distils_from_an_official_paco_checkpoint(tmp_path):
    """``method.teacher_checkpoint``: a released PaCo+SAM teacher in the official layout stands in
    for the teacher run (here the small official model above, 5 classes at 16 px)."""
    from ltbench.runner import build_data, load_teachers

    path = tmp_path / "paco_sam_ckpt.pth.tar"
    torch.save(official_checkpoint(), path)
    sizes = ",".join(OFFICIAL_SIZES)
    sets = [*SMALL_SYNTHETIC, "data.num_classes=5", "method.teacher=paco", f"method.teacher_sets={sizes}"]
    cfg = resolve_config("deit_lt", "synthetic_lt", "smoke", [*sets, f"method.teacher_checkpoint={path}"])
    teachers = load_teachers(cfg, build_data(cfg), torch.device("cpu"), tmp_path)
    teacher = teachers.modules["teacher"]
    assert isinstance(teacher, PaCo) and teachers.records["teacher"]["method"] == "paco"
    x = 0.5 * torch.sin(torch.arange(2 * 3 * 16 * 16, dtype=torch.float64) * 0.11).reshape(2, 3, 16, 16).float()
    torch.testing.assert_close(teacher.predict(x), torch.tensor(OFFICIAL_LOGITS), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "recipe,scale,steps,jitter",
    [
        # paco_cifar.py augmentation_sim_cifar: crop, flip, jitter (p 0.8), grayscale, blur
        (
            "simclr_cifar",
            (0.2, 1.0),
            [("RandomHorizontalFlip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5)],
            0.1,
        ),
        # paco_lt.py augmentation_sim: crop, jitter (always), grayscale, blur, flip
        (
            "simclr_imagenet",
            (0.08, 1.0),
            [("jitter", 1.0), ("gray", 0.2), ("blur", 0.5), ("RandomHorizontalFlip", 0.5)],
            0,
        ),
    ],
)
def test_the_simclr_views_are_the_official_key_transforms(recipe, scale, steps, jitter):
    from types import SimpleNamespace

    from torchvision.transforms import v2

    from ltbench.augment import RandomGaussianBlur

    t = RECIPES.get(recipe)(SimpleNamespace(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)).sample.transforms
    assert isinstance(t[1], v2.RandomResizedCrop) and tuple(t[1].scale) == scale and tuple(t[1].size) == (32, 32)
    seen = []
    for step in t[2:6]:
        if isinstance(step, v2.RandomApply):
            (inner,) = step.transforms
            if isinstance(inner, v2.ColorJitter):
                assert [inner.brightness, inner.contrast, inner.saturation] == [(0.6, 1.4)] * 3
                assert inner.hue == ((-jitter, jitter) if jitter else None)
                seen.append(("jitter", step.p))
            else:
                assert isinstance(inner, RandomGaussianBlur) and inner.sigma == (0.1, 2.0)
                seen.append(("blur", step.p))
        elif isinstance(step, v2.RandomGrayscale):
            seen.append(("gray", step.p))
        else:
            seen.append((type(step).__name__, step.p))
    assert seen == steps
