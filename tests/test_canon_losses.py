"""Balanced Softmax, focal and class-balanced losses against the official codes' values, by hand,
and their methods' presets, paper-scale step and smoke runs; the log prior, class-balanced weights
and LDAM margins these losses share, by hand, and their refusal of a class without training images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_SYNTHETIC, long_tailed_info, take_step

from ltbench.config import resolve_config
from ltbench.data import Batch
from ltbench.errors import DataError
from ltbench.losses import (
    BalancedCE,
    ClassBalancedLoss,
    FocalLoss,
    LDAMLoss,
    class_balanced_weights,
    ldam_margins,
    log_prior,
)
from ltbench.registry import METHODS, load_plugins
from ltbench.runner import build_method, train
from ltbench.trainer import TrainingInterrupted

COUNTS = [100, 40, 10, 3]
LOGITS = [
    [1.5, -0.3, 0.2, 0.8],
    [-1.0, 2.0, 0.5, -0.5],
    [0.3, 0.1, -2.0, 1.2],
    [0.0, 0.4, 0.9, -0.7],
    [2.2, -1.1, 0.6, 0.3],
]
TARGET = torch.tensor([0, 1, 2, 3, 3])

# Reference values, (loss, d loss / d logits), computed in a scratch directory outside the repo:
# - BALMS_OFFICIAL: the official loss/BalancedSoftmaxLoss.py (jiawei-ren/BalancedMetaSoftmax-
#   Classification) run as shipped, balanced_softmax_loss(labels, logits, COUNTS, "mean"), torch autograd;
# - CB_OFFICIAL[(loss_type, beta, gamma)]: src/cifar_main.py of richardaecn/class-balanced-loss (the
#   weights of main(), _tower_fn, focal_loss; TensorFlow) transcribed op by op into float64 numpy,
#   softmax_cross_entropy's SUM_BY_NONZERO_WEIGHTS reduction included; gradients by central differences;
# - FOCAL_ALPHA_OFFICIAL: torchvision.ops.sigmoid_focal_loss (Detectron's formula, alpha 0.25,
#   gamma 2) summed and divided by the batch, float64.
CB_OFFICIAL = {
    ("softmax", 0.9999, 1.0): (
        3.301290040996858,
        [
            [-0.008289141151, 0.001466355037, 0.002417611444, 0.004405174447],
            [0.001571571984, -0.01120595239, 0.007043296835, 0.00259108357],
            [0.03901503076, 0.03194280573, -0.1669193286, 0.09596149186],
            [0.1044852806, 0.1558737213, 0.256992321, -0.5173513231],
            [0.4100103523, 0.01512248038, 0.08277966246, -0.5079124956],
        ],
    ),
    ("sigmoid", 0.9999, 1.0): (
        5.644574715133333,
        [
            [-0.003130435466, 0.007302598082, 0.009435190851, 0.01184001253],
            [0.01150311357, -0.005098525602, 0.02662371745, 0.01614810152],
            [0.0981325492, 0.0896826835, -0.1504673839, 0.1312878037],
            [0.2846185891, 0.3407952747, 0.4046988882, -0.3803573212],
            [0.5124554909, 0.1421612326, 0.3675315736, -0.2422431407],
        ],
    ),
    ("focal", 0.9999, 1.0): (
        3.894690014792006,
        [
            [-0.001086561285, 0.005433152372, 0.008577806243, 0.0124680728],
            [0.005728022501, -0.001177763664, 0.02636315122, 0.01086176704],
            [0.09205027274, 0.07879368913, -0.170680136, 0.1453668987],
            [0.240950581, 0.3288987749, 0.4329086865, -0.3933801451],
            [0.57916833, 0.06614991421, 0.372413723, -0.1802295522],
        ],
    ),
    ("focal", 0.99, 0.5): (
        4.56932963104996,
        [
            [-0.002928622678, 0.009879586038, 0.01400867689, 0.01874804312],
            [0.009862888284, -0.002998494786, 0.03155300554, 0.01600230837],
            [0.09841757986, 0.0873107191, -0.162370033, 0.1411795463],
            [0.2631771467, 0.3344327326, 0.4149848829, -0.3846366168],
            [0.5324796568, 0.09876819318, 0.3684380179, -0.2108796981],
        ],
    ),
    ("focal", 0.0, 2.0): (
        1.683232214522818,
        [
            [-0.003406220861, 0.03848168784, 0.07669333346, 0.134832655],
            [0.01051622611, -0.0009741880636, 0.1052303643, 0.02758739959],
            [0.08590129374, 0.06791892304, -0.2153427461, 0.1708046293],
            [0.05965735883, 0.09544881741, 0.1444029728, -0.1250387791],
            [0.2204609619, 0.008493453385, 0.1151326385, -0.03848168773],
        ],
    ),
    ("softmax", 0.0, 1.0): (
        1.872740336367049,
        [
            [-0.09660962197, 0.01709031439, 0.02817716516, 0.0513421422],
            [0.007348632813, -0.05239876655, 0.03293428696, 0.01211584699],
            [0.04567677647, 0.03739698151, -0.1954204993, 0.1123467414],
            [0.03671063142, 0.05476582621, 0.09029358261, -0.18177004],
            [0.1440560696, 0.005313244067, 0.02908441876, -0.1784537327],
        ],
    ),
}
BALMS_OFFICIAL = (
    3.098379611968994,
    [
        [-0.01953860559, 0.01193202566, 0.004918146413, 0.002688433742],
        [0.020982299, -0.03142371401, 0.009403614327, 0.001037818845],
        [0.1417126954, 0.04640980437, -0.1985792071, 0.01045670826],
        [0.1076665074, 0.06424782425, 0.02648168802, -0.198396042],
        [0.1924131662, 0.002838723361, 0.003884755075, -0.1991366297],
    ],
)
FOCAL_ALPHA_OFFICIAL = (
    1.0372718864632804,
    [
        [-0.0008515552612, 0.0288612659, 0.05752000001, 0.1011244912],
        [0.007887169497, -0.0002435470098, 0.07892277328, 0.0206905496],
        [0.06442597029, 0.05093919229, -0.05383568652, 0.128103472],
        [0.04474301927, 0.07158661303, 0.1083022295, -0.03125969478],
        [0.1653457213, 0.006370089965, 0.0863494789, -0.009620421966],
    ],
)


def _check(loss_fn, expected):
    z = torch.tensor(LOGITS, requires_grad=True)
    loss = loss_fn(z, TARGET)
    loss.backward()
    value, grad = expected
    assert loss.item() == pytest.approx(value, abs=1e-5)
    assert torch.allclose(z.grad, torch.tensor(grad, dtype=torch.float32), atol=1e-5)


def test_balanced_softmax_equals_the_official_loss():
    _check(BalancedCE(COUNTS, tau=1.0), BALMS_OFFICIAL)


@pytest.mark.parametrize("key", list(CB_OFFICIAL), ids=lambda k: "-".join(map(str, k)))
def test_class_balanced_losses_equal_the_official_code(key):
    loss_type, beta, gamma = key
    _check(ClassBalancedLoss(COUNTS, beta, loss_type, gamma), CB_OFFICIAL[key])


def test_focal_loss_equals_the_official_code_with_and_without_alpha():
    _check(FocalLoss(gamma=2.0), CB_OFFICIAL[("focal", 0.0, 2.0)])  # the CB code's Focal baseline
    _check(FocalLoss(gamma=2.0, alpha=0.25), FOCAL_ALPHA_OFFICIAL)


def test_losses_by_hand():
    zero = torch.zeros(1, 2)
    # focal at z = 0: p = 1/2 for both binary tasks, (1/2)^gamma log 2 each
    assert FocalLoss(gamma=2.0)(zero, torch.tensor([0])).item() == pytest.approx(2 * 0.25 * math.log(2), rel=1e-6)
    # gamma = 0: the summed binary cross-entropy
    z = torch.tensor(LOGITS)
    bce = F.binary_cross_entropy_with_logits(z, F.one_hot(TARGET, 4).float(), reduction="sum") / 5
    assert FocalLoss(gamma=0.0)(z, TARGET).item() == pytest.approx(bce.item(), rel=1e-6)
    # CB softmax with counts (1, 2), beta 0.5: E = (1, 1.5), w = (1, 2/3) -> normalised to sum 2: (1.2, 0.8)
    cb = ClassBalancedLoss([1, 2], beta=0.5, loss_type="softmax")
    two = torch.tensor([0, 1])
    assert cb(torch.zeros(2, 2), two).item() == pytest.approx((1.2 + 0.8) / 2 * math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="softmax, sigmoid or focal"):
        ClassBalancedLoss(COUNTS, loss_type="hinge")


def test_prior_weights_and_margins_by_hand():
    assert log_prior([1, 3]).tolist() == pytest.approx([math.log(0.25), math.log(0.75)])
    # counts (1, 3), beta 0.5: E = (1, (1 - 0.125) / 0.5 = 1.75) (Eq. 2), w = 1 / E = (1, 4/7),
    # normalised to sum 2: (14/11, 8/11)
    assert class_balanced_weights([1, 3], beta=0.5).tolist() == pytest.approx([14 / 11, 8 / 11])
    # n^(-1/4) = (1/3, 1) for counts (81, 1), scaled so that the largest is 0.3
    assert ldam_margins([81, 1], 0.3).tolist() == pytest.approx([0.1, 0.3])


@pytest.mark.parametrize(
    "build",
    [log_prior, class_balanced_weights, ldam_margins, BalancedCE, ClassBalancedLoss, LDAMLoss],
    ids=lambda f: f.__name__,
)
def test_a_class_without_training_images_is_refused_by_its_index(build):
    """log 0, 1 / (1 - beta^0) and 0^(-1/4) are infinite: the loss would train on NaN."""
    with pytest.raises(DataError, match=r"no image of class 2\. Drop it from the split file"):
        build([5, 3, 0, 1])
    with pytest.raises(DataError, match=r"no image of classes 1, 3\. Drop these classes"):
        build([5, 0, 2, 0])


def test_presets():
    load_plugins()
    ce = resolve_config("ce", "fmnist_lt", "cpu")
    for name in ("bal_softmax", "focal", "cb"):
        cpu = resolve_config(name, "fmnist_lt", "cpu")
        assert cpu.model == ce.model and cpu.stages == ce.stages  # beside ce / la cpu: same backbone, budget
        assert {"paper", "cpu", "smoke"} <= set(METHODS.get(name).presets)
    bal = resolve_config("bal_softmax", "cifar10_lt", "paper")
    t = bal.stages["train"]
    assert (bal.data.imb_factor, t.epochs, t.schedule.warmup_epochs, t.batch_size) == (200.0, 591, 37, 512)
    assert (t.optim.lr, t.optim.weight_decay, t.augment) == (0.1, 5e-4, ["autoaug_cutout"])
    assert resolve_config("bal_softmax", "cifar100_lt", "paper").stages["train"].epochs == 685
    cb = resolve_config("cb", "cifar100_lt", "paper")
    assert (cb.method.beta, cb.method.loss_type, cb.method.gamma) == (0.9999, "focal", 1.0)
    c = cb.stages["train"]
    assert (c.epochs, c.optim.lr, c.optim.weight_decay, c.schedule.milestones) == (200, 0.1, 2e-4, [160, 180])


@pytest.mark.parametrize("name", ["focal", "cb"])
def test_sigmoid_heads_start_at_the_prior_and_skip_bias_decay(name):
    load_plugins()
    cfg = resolve_config(name, "cifar100_lt", "paper")
    method = build_method(cfg, long_tailed_info(100, 32))
    assert torch.allclose(method.net.fc.bias, torch.full((100,), -math.log(99)))
    groups = method.param_groups("train", cfg.stages["train"].optim)
    no_decay = [g for g in groups if g["weight_decay"] == 0]
    assert len(no_decay) == 1 and no_decay[0]["params"] == [method.net.fc.bias]


@pytest.mark.parametrize("name", ["bal_softmax", "focal", "cb"])
def test_paper_scale_resnet32_takes_a_step(name):
    load_plugins()
    cfg = resolve_config(name, "cifar100_lt", "paper")
    method = build_method(cfg, long_tailed_info(100, 32))
    batch = Batch([torch.randn(4, 3, 32, 32)], torch.tensor([0, 1, 50, 99]), torch.arange(4))
    take_step(method, "train", batch, 1, cfg.stages["train"].epochs)
    assert method.net.fc.weight.grad is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bal_softmax", "focal", "cb"])
def test_smoke_run_resumes_mid_epoch(tmp_path, name):
    from conftest import stop_at_step

    cfg = resolve_config(name, "synthetic_lt", "smoke", list(SMALL_SYNTHETIC))
    reference = train(cfg, tmp_path / "reference", progress=False).record
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "stopped", progress=False, on_trainer=stop_at_step(2))
    resumed = train(cfg, tmp_path / "stopped", progress=False).record
    assert resumed["resumes"] == 1 and resumed["splits"] == reference["splits"]
