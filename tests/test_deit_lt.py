"""DeiT-LT: the loss (by hand and against the official code), the teacher's view of the batch, the
repeated-augmentation sampler, the model and its two heads, presets, the teacher run it declares,
the paper-scale DeiT-B/16, and runs through the trainer (with a stand-in teacher) that resume
mid-stage exactly.

Reference numbers marked "official" were computed by running the official code (val-iisc/DeiT-LT
@ bc36970) outside this repository with this venv's torch 2.14 / timm 1.0: ``losses.DistillationLoss``
(``distillation_type='hard'``, alpha 0.5, ``Tensor.cuda`` patched to a no-op on the CPU, the teacher a
module returning the logits below, weights built as ``main.py``'s ``per_cls_weights``) and
``samplers.RASampler``.

``ldam_drw`` (the real teacher) comes from another part of the core; the tests that need it skip
with a reason while it is not registered.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import stop_at_step
from torch import nn
from torchvision.transforms import v2

from ltbench.config import Config, resolve_config
from ltbench.data import SAMPLERS, Batch, shard
from ltbench.errors import ConfigError
from ltbench.method import DataInfo, StepContext
from ltbench.methods.deit_lt import DeiTLT, DeiTLTLoss, cross_entropy, resize_for_teacher
from ltbench.optim import effective_lr
from ltbench.registry import DATASETS, METHODS, load_plugins
from ltbench.runner import build_data, run_dir_for
from ltbench.trainer import Trainer, TrainingInterrupted, seed_everything

COUNTS = np.array([50, 20, 10, 5, 2])


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ldam_drw_registered() -> bool:
    load_plugins()
    return "ldam_drw" in METHODS.names()


needs_ldam_drw = pytest.mark.skipif(
    not ldam_drw_registered(), reason="the ldam_drw teacher method is not registered in this checkout"
)

# ----------------------------------------------------------------------------- the loss

CLS = torch.tensor(
    [
        [1.50, -0.30, 0.20, -2.00, 0.70],
        [-0.40, 2.10, -1.10, 0.30, 0.00],
        [0.90, 0.10, -0.60, 1.40, -1.70],
        [-1.20, -0.80, 2.50, -0.50, 0.60],
    ]
)
DIST = torch.tensor(
    [
        [0.30, 1.20, -0.50, 0.80, -1.00],
        [1.10, -0.70, 0.40, -0.20, 0.90],
        [-0.60, 0.50, 1.30, -1.40, 0.20],
        [0.70, -1.10, -0.30, 1.60, -0.40],
    ]
)
TEACHER = torch.tensor(  # argmax 1, 4, 2, 4: two of four differ from the labels
    [
        [0.2, 2.0, 0.1, -1.0, 0.0],
        [0.0, 0.3, 0.1, -0.5, 1.5],
        [0.1, 0.2, 0.9, 0.0, 0.3],
        [0.4, 0.0, -0.2, 0.1, 2.2],
    ]
)
LABELS = torch.tensor([0, 1, 4, 2])


def smoothed_one_hot(y: torch.Tensor, eps: float = 0.1, c: int = 5) -> torch.Tensor:
    return torch.full((len(y), c), eps / c).scatter_(1, y[:, None], 1 - eps + eps / c)


# timm Mixup's batch targets for lam 0.7, smoothing 0.1: each row mixed with the flipped batch's
SOFT = 0.7 * smoothed_one_hot(LABELS) + 0.3 * smoothed_one_hot(LABELS.flip(0))

K = 10  # DRW epoch of the loss under test


def run_loss(target: torch.Tensor, epoch: int) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    cls, dist = CLS.clone().requires_grad_(True), DIST.clone().requires_grad_(True)
    loss, cls_term, dist_term = DeiTLTLoss(COUNTS, drw_epoch=K)(cls, dist, target, TEACHER, epoch)
    loss.backward()
    return [loss.item(), cls_term.item(), dist_term.item()], cls.grad, dist.grad


G_CLS_SOFT = [
    [-0.016056086868047714, 0.008276482112705708, -0.018482588231563568, -0.0005313142901286483, 0.02679351158440113],
    [0.004773929715156555, 0.007364610675722361, 0.001112127210944891, 0.012147895991802216, -0.02539857290685177],
    [0.034313932061195374, -0.019708435982465744, 0.005714298691600561, 0.05819591134786606, -0.07851569354534149],
    [-0.03379914537072182, 0.001156252110376954, 0.017880648374557495, 0.0024354238994419575, 0.012326834723353386],
]
G_CLS_INT = [
    [-0.059806086122989655, 0.01077648252248764, 0.017767416313290596, 0.001968685770407319, 0.029293512925505638],
    [0.007273930124938488, -0.03638538718223572, 0.00361212738789618, 0.014647896401584148, 0.010851429775357246],
    [0.03681393340229988, 0.01654156669974327, 0.008214298635721207, 0.060695912688970566, -0.12226569652557373],
    [0.00245085870847106, 0.0036562520544975996, -0.025869354605674744, 0.004935423843562603, 0.014826835133135319],
]
G_DIST_PLAIN = [
    [0.021440142765641212, -0.07226575911045074, 0.009633676148951054, 0.03534881770610809, 0.0058431196957826614],
    [0.04540259391069412, 0.007504997309297323, 0.022546257823705673, 0.012373648583889008, -0.08782750368118286],
    [0.009352834895253181, 0.028097473084926605, -0.06246792525053024, 0.00420250091701746, 0.02081512287259102],
    [0.028897374868392944, 0.00477670319378376, 0.01063074916601181, 0.07107607275247574, -0.1153808981180191],
]
G_DIST_DRW = [
    [0.003731801640242338, -0.012578343041241169, 0.0016768063651397824, 0.006152700632810593, 0.0010170344030484557],
    [0.07895520329475403, 0.013051205314695835, 0.03920798748731613, 0.02151780016720295, -0.15273220837116241],
    [0.00325422128662467, 0.00977622251957655, -0.021735060960054398, 0.001462216256186366, 0.007242404390126467],
    [0.05025259405374527, 0.008306696079671383, 0.01848689466714859, 0.12360142916440964, -0.20064760744571686],
]

# (mode, target, epoch, official (loss, 0.5 base, 0.5 distill), official grads of CLS and DIST logits).
# Official criteria: before DRW DistillationLoss(SoftTargetCrossEntropy() or CrossEntropyLoss(),
# weighted_distillation=False); after DRW the CIFAR one (CrossEntropyLoss(), integer labels,
# weighted_distillation=True) and the ImageNet-LT/iNat one (SoftTargetCrossEntropy(), weighted).
OFFICIAL = [
    (
        "before-drw-soft",
        SOFT,
        K,
        (1.5274083614349365, 0.8607845306396484, 0.6666238307952881),
        G_CLS_SOFT,
        G_DIST_PLAIN,
    ),
    ("before-drw-int", LABELS, 1, (1.297783374786377, 0.6311596035957336, 0.6666238307952881), G_CLS_INT, G_DIST_PLAIN),
    (
        "after-drw-int",
        LABELS,
        K + 1,
        (1.5011545419692993, 0.6311596035957336, 0.8699949383735657),
        G_CLS_INT,
        G_DIST_DRW,
    ),
    (
        "after-drw-soft",
        SOFT,
        K + 5,
        (1.7307794094085693, 0.8607845306396484, 0.8699949383735657),
        G_CLS_SOFT,
        G_DIST_DRW,
    ),
]


@pytest.mark.parametrize("mode,target,epoch,values,g_cls,g_dist", OFFICIAL, ids=[c[0] for c in OFFICIAL])
def test_loss_equals_the_official_code_in_value_and_gradient(mode, target, epoch, values, g_cls, g_dist):
    got, grad_cls, grad_dist = run_loss(target, epoch)
    assert got == pytest.approx(list(values), abs=1e-5)
    torch.testing.assert_close(grad_cls, torch.tensor(g_cls), atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_dist, torch.tensor(g_dist), atol=1e-5, rtol=0)


def test_loss_by_hand_before_and_after_drw():
    # C = 2, counts (3, 1), beta 0.5: w ~ (0.5 / (1 - 0.125), 0.5 / 0.5) = (4/7, 1), normalised to sum 2
    counts = np.array([3, 1])
    loss = DeiTLTLoss(counts, drw_epoch=2, beta=0.5)
    torch.testing.assert_close(loss.weight, torch.tensor([2 * 4 / 11, 2 * 7 / 11]))
    cls = torch.zeros(2, 2)  # CE = log 2 for any target
    dist = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # teacher labels 0, 1
    a, b = np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(-1.0))  # CE of each DIST row to its teacher label
    total, cls_term, dist_term = loss(cls, dist, torch.tensor([1, 1]), teacher, epoch=2)  # epoch K: unweighted
    assert cls_term.item() == pytest.approx(0.5 * np.log(2), rel=1e-6)
    assert dist_term.item() == pytest.approx(0.5 * (a + b) / 2, rel=1e-6)
    assert total.item() == pytest.approx(0.5 * np.log(2) + 0.5 * (a + b) / 2, rel=1e-6)
    _, _, dist_term = loss(cls, dist, torch.tensor([1, 1]), teacher, epoch=3)  # K + 1: weighted mean
    assert dist_term.item() == pytest.approx(0.5 * (4 * a + 7 * b) / 11, rel=1e-6)
    # the weights follow the teacher's label: changing the true labels leaves the DIST term alone
    _, _, same = loss(cls, dist, torch.tensor([0, 0]), teacher, epoch=3)
    assert same.item() == dist_term.item()
    # soft targets: sum_j -t_j log softmax(z)_j, here with z = 0: log 2 whatever t
    assert cross_entropy(torch.zeros(1, 2), torch.tensor([[0.3, 0.7]])).item() == pytest.approx(np.log(2))
    z = torch.tensor([[1.0, -1.0]])
    t = torch.tensor([[0.25, 0.75]])
    expected = -(0.25 * np.log(1 / (1 + np.exp(-2.0))) + 0.75 * np.log(1 / (1 + np.exp(2.0))))
    assert cross_entropy(z, t).item() == pytest.approx(expected, rel=1e-6)


def test_the_alpha_split_and_the_drw_weights_are_the_official_ones():
    loss = DeiTLTLoss(COUNTS, drw_epoch=0, alpha=0.3)
    total, cls_term, dist_term = loss(CLS, DIST, LABELS, TEACHER, epoch=1)
    assert cls_term.item() == pytest.approx(0.7 * nn.functional.cross_entropy(CLS, LABELS).item(), rel=1e-6)
    assert total.item() == pytest.approx(cls_term.item() + dist_term.item(), rel=1e-6)
    # official main.py per_cls_weights for counts (50, 20, 10, 5, 2), beta 0.9999
    official = [0.11519702523946762, 0.2875611186027527, 0.5748348236083984, 1.14938223361969, 2.8730247020721436]
    torch.testing.assert_close(loss.weight, torch.tensor(official), atol=1e-6, rtol=0)


def test_the_teacher_sees_a_bicubic_resize_without_antialiasing():
    x = torch.randn(3, 3, 224, 224)
    reference = v2.functional.resize(x, [32], interpolation=v2.InterpolationMode.BICUBIC, antialias=False)
    torch.testing.assert_close(resize_for_teacher(x, 32), reference)
    antialiased = v2.functional.resize(x, [32], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    assert not torch.allclose(resize_for_teacher(x, 32), antialiased, atol=1e-3)
    assert resize_for_teacher(x, 224) is x


# ----------------------------------------------------------------------------- repeated augmentation


def _official_seeding(epoch: int) -> torch.Generator:
    """RASampler's generator: seeded with the epoch number."""
    return torch.Generator().manual_seed(epoch)


def test_repeated_aug_sampler_equals_the_official_rasampler():
    epochs = SAMPLERS.get("repeated_aug")(np.zeros(600, dtype=np.int64), 1, _official_seeding)
    order = [next(epochs) for _ in range(4)][3]  # epoch 3 (set_epoch(3))
    assert len(order) == 512  # 600 // 256 * 256 draws, 3 copies of each image in a row
    # official RASampler(600 images, num_replicas=W, rank=r), set_epoch(3): first 9 and last 3 indices
    official = {
        (1, 0): ([586, 586, 586, 362, 362, 362, 85, 85, 85], [415, 453, 453]),
        (2, 0): ([586, 586, 362, 85, 85, 279, 572, 572, 95], [58, 415, 453]),
        (2, 1): ([586, 362, 362, 85, 279, 279, 572, 95, 95], [415, 415, 453]),
        (4, 2): ([586, 85, 279, 572, 138, 297, 117, 124, 501], [352, 58, 453]),
    }
    for (world, rank), (head, tail) in official.items():
        part = shard(order, rank, world, pad=True).tolist()
        assert len(part) == 512 // world and part[:9] == head and part[-3:] == tail
    assert len(set(order.tolist())) == 171  # ceil(512 / 3) distinct images


def test_repeated_aug_sampler_is_a_pure_function_of_the_epoch_seeds():
    labels = np.zeros(300, dtype=np.int64)

    def gens(e):
        return torch.Generator().manual_seed(1000 + e)

    first = SAMPLERS.get("repeated_aug")(labels, 1, gens)
    second = SAMPLERS.get("repeated_aug")(labels, 1, gens)
    a = [next(first) for _ in range(3)]
    assert all(torch.equal(x, next(second)) for x in a)
    assert not torch.equal(a[0], a[1])
    assert torch.equal(a[2][:3], a[2][0].repeat(3))
    # fewer than 256 images: the official sampler would yield nothing; here every draw is kept
    small = next(SAMPLERS.get("repeated_aug")(np.zeros(100, dtype=np.int64), 1, gens))
    assert len(small) == 100 and len(set(small.tolist())) == 34


# ----------------------------------------------------------------------------- the method


class StandInTeacher(nn.Module):
    """A frozen linear classifier on 4x4-pooled pixels with fixed random weights, in place of an
    ``ldam_drw`` run; it records the images it was shown."""

    def __init__(self, info: DataInfo) -> None:
        super().__init__()
        self.info = info
        gen = torch.Generator().manual_seed(123)
        self.weight = nn.Parameter(
            torch.randn(info.num_classes, info.in_chans * 16, generator=gen), requires_grad=False
        )
        self.seen: list[torch.Tensor] = []
        self.eval()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        assert not torch.is_grad_enabled()
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) @ self.weight.t()


def smoke_config(*sets: str) -> Config:
    return resolve_config("deit_lt", "synthetic_lt", "smoke", list(sets))


INFO = DataInfo(num_classes=5, in_chans=3, image_size=16, train_counts=COUNTS)


def build(cfg: Config, info: DataInfo = INFO, teacher_size: int = 16) -> tuple[DeiTLT, StandInTeacher]:
    teacher = StandInTeacher(dataclasses.replace(info, image_size=teacher_size))
    torch.manual_seed(0)
    return DeiTLT(cfg, info, {"teacher": teacher}), teacher


def test_the_student_is_timms_distilled_vit_with_two_heads():
    method, _ = build(smoke_config())
    vit = method.vit
    assert type(vit).__name__ == "VisionTransformerDistilled"
    assert vit.pos_embed.shape == (1, 2 + 16, 32) and vit.dist_token.shape == (1, 1, 32)
    x = torch.randn(2, 3, 16, 16)
    method.eval()
    cls, dist = method.heads(x)
    tokens = vit.forward_features(x)
    torch.testing.assert_close(cls, vit.head(tokens[:, 0]))
    torch.testing.assert_close(dist, vit.head_dist(tokens[:, 1]))
    torch.testing.assert_close(method.predict(x), (cls + dist) / 2)
    torch.testing.assert_close(method.predict(x), vit(x))  # timm's own inference average
    heads = method.predict_heads(x)
    assert set(heads) == {"cls", "dist"}
    torch.testing.assert_close(heads["cls"], cls)
    torch.testing.assert_close(heads["dist"], dist)
    torch.testing.assert_close(method.predict_heads(x.clone())["cls"], cls)  # without predict first
    assert all(k.startswith("vit.") for k in method.state_dict())  # the teacher is never saved


def test_no_weight_decay_on_tokens_and_1d_parameters():
    method, _ = build(smoke_config())
    groups = method.param_groups("train", method.cfg.stages["train"].optim)
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(method.named_parameters())
    for name in ("vit.cls_token", "vit.dist_token", "vit.pos_embed", "vit.norm.weight", "vit.head.bias"):
        assert decay[id(params[name])] == 0.0, name
    for name in ("vit.patch_embed.proj.weight", "vit.blocks.0.attn.qkv.weight", "vit.head_dist.weight"):
        assert decay[id(params[name])] == 0.05, name
    assert "vit.weight" not in params  # the teacher's parameters are not the student's


def _step(method: DeiTLT, epoch: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    method.train()
    return method.train_step(Batch([x.clone()], y, torch.arange(len(y))), StepContext("train", epoch, 4, 0, 1))


def test_before_drw_the_teacher_sees_the_mixed_batch_and_the_cls_head_soft_targets():
    method, teacher = build(smoke_config("method.drw_epoch=2", "model.drop_path=0"))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    np.random.seed(0)
    out = _step(method, 2, x, y)
    (seen,) = teacher.seen
    assert not torch.equal(seen, x)  # Mixup/CutMix changed the images the teacher saw
    np.random.seed(0)
    mixed, soft = method.mixup(x.clone(), y)
    torch.testing.assert_close(seen, mixed)
    cls, dist = method.heads(mixed)
    expected = DeiTLTLoss(COUNTS, 2)(cls, dist, soft, method.teacher_logits(mixed), 2)
    assert out["loss"].item() == pytest.approx(expected[0].item(), rel=1e-5)
    assert out["cls"].item() == pytest.approx(expected[1].item(), rel=1e-5)
    assert out["dist"].item() == pytest.approx(expected[2].item(), rel=1e-5)
    assert out["loss"].requires_grad and not out["dist"].requires_grad


@pytest.mark.parametrize("mixup_after_drw", [False, True], ids=["cifar-no-mixup-drw", "imagenet-mixup-drw"])
def test_after_drw_mixup_stops_only_for_the_cifar_recipe(mixup_after_drw):
    method, teacher = build(
        smoke_config("method.drw_epoch=2", "model.drop_path=0", f"method.mixup_after_drw={mixup_after_drw}")
    )
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    np.random.seed(0)
    out = _step(method, 3, x, y)
    (seen,) = teacher.seen
    assert torch.equal(seen, x) != mixup_after_drw
    if not mixup_after_drw:  # integer labels, DIST term weighted by the teacher's labels
        cls, dist = method.heads(x)
        expected = DeiTLTLoss(COUNTS, 2)(cls, dist, y, method.teacher_logits(x), 3)
        assert out["loss"].item() == pytest.approx(expected[0].item(), rel=1e-5)
        unweighted = DeiTLTLoss(COUNTS, 2)(cls, dist, y, method.teacher_logits(x), 2)
        assert out["dist"].item() != pytest.approx(unweighted[2].item(), rel=1e-3)


def test_the_teacher_gets_the_batch_at_its_own_resolution():
    info = dataclasses.replace(INFO, image_size=32)
    method, teacher = build(smoke_config("method.mixup=0", "method.cutmix=0"), info, teacher_size=16)
    assert method.teacher_size == 16 and method.mixup is None
    x = torch.randn(2, 3, 32, 32)
    _step(method, 1, x, torch.tensor([0, 4]))
    torch.testing.assert_close(teacher.seen[0], resize_for_teacher(x, 16))
    method, _ = build(smoke_config("method.teacher_size=8"), info)
    assert method.teacher_size == 8


CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # Saddle-LongTail cifar_train_sam.py
IMAGENET_SETS = ["data.mean=0.485,0.456,0.406", "data.std=0.229,0.224,0.225"]  # DeiT-LT datasets.py


@pytest.mark.parametrize("teacher_input", ["student", "own"])
def test_the_teacher_sees_the_student_batch_as_is_or_in_its_own_statistics(teacher_input):
    """Official (``student``): the ImageNet-normalised batch as it is; ``own``: pixel values
    restored with the student's statistics, then standardised with the teacher's, by hand."""
    cfg = resolve_config("deit_lt", "cifar10_lt", "smoke", [*IMAGENET_SETS, f"method.teacher_input={teacher_input}"])
    teacher = StandInTeacher(INFO)
    teacher.cfg = resolve_config("ldam_drw", "cifar10_lt", "paper_sam")  # trained with CIFAR's statistics
    assert (teacher.cfg.data.mean, teacher.cfg.data.std) == CIFAR_STATS
    method = DeiTLT(cfg, INFO, {"teacher": teacher})
    x = torch.randn(2, 3, 16, 16)
    method.teacher_logits(x)
    if teacher_input == "student":
        torch.testing.assert_close(teacher.seen[0], x, rtol=0, atol=0)
        return
    expected = torch.empty_like(x)
    (s_mean, s_std), (t_mean, t_std) = (cfg.data.mean, cfg.data.std), CIFAR_STATS
    for c in range(3):
        pixels = x[:, c] * s_std[c] + s_mean[c]
        expected[:, c] = (pixels - t_mean[c]) / t_std[c]
    torch.testing.assert_close(teacher.seen[0], expected)
    assert all(k.startswith("vit.") for k in method.state_dict())  # nothing new is saved


def test_teacher_input_own_needs_both_statistics():
    cfg = resolve_config("deit_lt", "cifar10_lt", "smoke", [*IMAGENET_SETS, "method.teacher_input=own"])
    with pytest.raises(ConfigError, match="teacher_input=student"):
        DeiTLT(cfg, INFO, {"teacher": StandInTeacher(INFO)})  # a teacher whose statistics are unknown


def test_a_missing_teacher_or_another_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="teachers"):
        DeiTLT(smoke_config(), INFO)
    with pytest.raises(ConfigError, match="model.arch=deit_distilled"):
        build(smoke_config("model.arch=vit"))


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    "dataset,epochs,drw,batch,lr,mixup_after_drw",
    [
        ("cifar10_lt", 1200, 1100, 256, 2.5e-4, False),
        ("cifar100_lt", 1200, 1100, 256, 2.5e-4, False),
        ("imagenet_lt", 1400, 1200, 512, 5e-4, True),
        ("inat2018", 1000, 900, 512, 5e-4, True),
    ],
)
def test_paper_presets_follow_the_official_scripts(dataset, epochs, drw, batch, lr, mixup_after_drw):
    cfg = resolve_config("deit_lt", dataset, "paper")
    s = cfg.stages["train"]
    assert (s.epochs, cfg.method.drw_epoch, s.batch_size, s.accum_steps) == (epochs, drw, batch, 4)
    assert effective_lr(s.optim, s.batch_size * s.accum_steps) == pytest.approx(lr)  # not scaled by accumulation
    assert cfg.method.mixup_after_drw == mixup_after_drw
    assert (s.optim.name, s.optim.weight_decay, s.optim.eps, s.optim.no_decay_1d) == ("adamw", 0.05, 1e-8, True)
    sch = s.schedule
    assert (sch.name, sch.per, sch.warmup_epochs, sch.min_lr) == ("timm_cosine", "batch", 5, 1e-5)
    assert sch.warmup_from * lr == pytest.approx(1e-6)
    assert s.sampler == "repeated_aug" and s.augment == ["randaug_erase"]
    assert (cfg.method.mixup, cfg.method.cutmix, cfg.method.smoothing, cfg.method.alpha) == (0.8, 1.0, 0.1, 0.5)
    assert cfg.method.beta == 0.9999 and cfg.method.teacher_preset == "paper_sam"
    m = cfg.model
    assert (m.arch, m.embed_dim, m.depth, m.num_heads, m.patch_size, m.drop_path) == (
        "deit_distilled",
        768,
        12,
        12,
        16,
        0.1,
    )
    assert cfg.data.image_size == 224 and tuple(cfg.data.mean) == (0.485, 0.456, 0.406)
    assert cfg.eval.augment == "resize_center_crop_bicubic"
    assert cfg.eval.shot_rule == "index:{},{}".format(*DATASETS.get(dataset).index_cuts)  # main.py categories
    assert getattr(cfg.data, "reindex", False) == (dataset in ("imagenet_lt", "inat2018"))


@pytest.mark.parametrize("dataset", ["cifar10_lt", "cifar100_lt", "imagenet_lt", "inat2018"])
def test_paper_feeds_the_teacher_the_student_batch_and_the_variant_its_own_statistics(dataset):
    paper = resolve_config("deit_lt", dataset, "paper")
    variant = resolve_config("deit_lt", dataset, "paper_teacher_norm")
    assert (paper.method.teacher_input, variant.method.teacher_input) == ("student", "own")
    assert variant.train.precision == paper.train.precision == "fp16"  # engine.py: autocast + NativeScaler
    same = dataclasses.replace(variant, method=dataclasses.replace(variant.method, teacher_input="student"))
    assert same.semantic_dict() == dataclasses.replace(paper, preset=variant.preset).semantic_dict()


def test_cpu_preset_is_the_small_vit_of_the_ce_and_livt_rows():
    cfg = resolve_config("deit_lt", "fmnist_lt", "cpu")
    ce = resolve_config("ce", "fmnist_lt", "cpu_vit")
    livt = resolve_config("livt", "fmnist_lt", "cpu")
    fields = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")
    assert [getattr(cfg.model, f) for f in fields] == [getattr(ce.model, f) for f in fields]
    assert [getattr(cfg.model, f) for f in fields] == [getattr(livt.model, f) for f in fields]
    s = cfg.stages["train"]
    assert s.epochs == ce.stages["train"].epochs == 30 and s.batch_size == 128
    assert effective_lr(s.optim, s.batch_size) == ce.stages["train"].optim.lr == 1e-3
    assert cfg.method.teacher_preset == "cpu_sam" and cfg.method.drw_epoch == 27 and not cfg.method.mixup_after_drw
    assert cfg.data.image_size == 0 and cfg.eval.augment == "default"  # native 28 px
    assert s.sampler == "instance"  # tuned on val: every distinct image in each of the 30 epochs


# ----------------------------------------------------------------------------- the teacher run


@needs_ldam_drw
@pytest.mark.parametrize("dataset,preset", [("cifar100_lt", "paper"), ("imagenet_lt", "paper"), ("fmnist_lt", "cpu")])
def test_requires_one_ldam_drw_teacher_on_the_same_data(dataset, preset):
    cfg = resolve_config("deit_lt", dataset, preset, seed=2)
    (name, teacher), *rest = DeiTLT.requires(cfg).items()
    assert name == "teacher" and not rest
    assert (teacher.method_name, teacher.dataset_name, teacher.seed) == ("ldam_drw", dataset, 0)
    assert teacher.preset == cfg.method.teacher_preset
    assert teacher.data.seed == cfg.data.seed and teacher.data.root == cfg.data.root
    assert getattr(teacher.data, "reindex", False) == getattr(cfg.data, "reindex", False)
    own = resolve_config("ldam_drw", dataset, cfg.method.teacher_preset).data
    assert (teacher.data.image_size, teacher.data.mean if hasattr(own, "mean") else None) == (
        own.image_size,
        own.mean if hasattr(own, "mean") else None,
    )  # the teacher keeps its own resolution and normalisation (CIFAR: 32 px, the student 224)
    other_seed = resolve_config("deit_lt", dataset, preset, seed=1)
    assert DeiTLT.requires(other_seed)["teacher"].run_id() == teacher.run_id()  # one teacher for every seed


# ----------------------------------------------------------------------------- the paper-scale model


@pytest.mark.slow
def test_paper_scale_deit_b16_builds_and_trains_one_step():
    cfg = resolve_config("deit_lt", "cifar10_lt", "paper")
    info = DataInfo(
        num_classes=10,
        in_chans=3,
        image_size=224,
        train_counts=np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]),
    )
    method, teacher = build(cfg, info, teacher_size=32)
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == 85_815_572  # note: 85.82 M
    assert method.vit.pos_embed.shape == (1, 198, 768) and method.vit.blocks[11].drop_path1.drop_prob == pytest.approx(
        0.1
    )
    opt = torch.optim.AdamW(method.param_groups("train", cfg.stages["train"].optim), lr=2.5e-4)
    np.random.seed(0)
    out = _step(method, 1, torch.randn(2, 3, 224, 224), torch.tensor([0, 9]))
    out["loss"].backward()
    opt.step()
    assert torch.isfinite(out["loss"]) and method.vit.head_dist.weight.grad.abs().sum() > 0
    assert teacher.seen[0].shape == (2, 3, 32, 32)  # CIFAR teacher at 32 px (--teacher-size 32)
    method.eval()
    assert method.predict(torch.randn(1, 3, 224, 224)).shape == (1, 10)


# ----------------------------------------------------------------------------- runs through the trainer


def fit(cfg: Config, root, on_trainer=None) -> tuple[dict, list]:
    """What ``ltbench run`` does, with the stand-in teacher passed in by hand."""
    data = build_data(cfg)
    run = run_dir_for(cfg, root)
    run.path.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    info = DataInfo.of(data)
    method = DeiTLT(cfg, info, {"teacher": StandInTeacher(info)})
    trainer = Trainer(cfg, data, method, run, torch.device("cpu"), progress=False)
    if on_trainer is not None:
        on_trainer(trainer)
    return trainer.fit(), run.read_metrics()


def test_smoke_run_reports_both_heads_and_is_deterministic(tmp_path):
    record, _ = fit(smoke_config(), tmp_path / "a")
    heads = record["splits"]["test"]["heads"]
    assert set(heads) == {"main", "cls", "dist"} and sum(heads["main"]["total"]) == 200
    assert record["selection"] == {"policy": "last", "stage": "train", "epoch": 2}
    again, _ = fit(smoke_config(), tmp_path / "b")
    assert again["splits"] == record["splits"]


@pytest.mark.parametrize("stop_after", [3, 8, 11], ids=["mid-epoch1", "epoch-end", "mid-drw-epoch"])
def test_resume_in_the_middle_of_the_stage_gives_the_same_result(tmp_path, stop_after):
    cfg = smoke_config()  # 403 images -> 256 draws -> 8 steps per epoch; DRW (and no Mixup) in epoch 2
    reference, ref_metrics = fit(cfg, tmp_path / "reference")
    with pytest.raises(TrainingInterrupted):
        fit(cfg, tmp_path / "stopped", on_trainer=stop_at_step(stop_after))
    resumed, metrics = fit(cfg, tmp_path / "stopped")
    assert resumed["resumes"] == 1
    assert resumed["splits"] == reference["splits"]
    assert metrics == ref_metrics


@needs_ldam_drw
def test_smoke_run_with_the_real_teacher_resumes_mid_stage(tmp_path):
    from ltbench.runner import train

    cfg = smoke_config()
    reference = train(cfg, tmp_path / "reference", progress=False)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "stopped", progress=False, on_trainer=stop_at_step(11))
    resumed = train(cfg, tmp_path / "stopped", progress=False)
    assert resumed.record["splits"] == reference.record["splits"]


@pytest.mark.parametrize("dataset", ["fmnist_lt", "synthetic_lt", "cifar10_lt", "imagenet_lt", "inat2018"])
def test_defaults_resolve_for_every_dataset(dataset):
    cfg = resolve_config("deit_lt", dataset)  # the DeiT-B/16 ImageNet-LT recipe without its data keys
    assert cfg.model.arch == "deit_distilled" and cfg.stages["train"].epochs == 1400
    assert cfg.eval.shot_rule == "strict" and cfg.eval.augment == "resize_center_crop_bicubic"
