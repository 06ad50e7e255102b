"""SHIKE: the DKT and re-training losses against the official code and by hand, the DKF model,
the two stages and their head sets, the schedules against the official log, presets, whole runs.

Reference values marked "official" were obtained by running a transcription of
jinyan-06/SHIKE @ 2b04b62 ``cifarTrain.py::mix_outputs`` (with ``utils.soft_entropy``; its one
``.cuda()`` dropped) on the CPU: float32 expert logits ``LOGITS`` below, labels made float64
one-hot by ``utils.to_categorical`` as the official dataset does, ``label_dis = COUNTS``; loss
value and d loss / d logits, with ``balance=False`` (stage 1) and ``balance=True`` (stage 2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SMALL_SYNTHETIC, final_results, resolve_registered, stop_at_step, take_step

from ltbench.config import Config, DataConfig, StageConfig, apply_overlay, resolve_config
from ltbench.data import Batch
from ltbench.errors import ConfigError
from ltbench.method import DataInfo, StepContext
from ltbench.methods.shike import SHIKE, DKTLoss, RetrainLoss, SHIKEParams
from ltbench.models import create_model
from ltbench.models.multi_expert import DepthFusionNet
from ltbench.optim import make_schedule
from ltbench.runner import train
from ltbench.trainer import TrainingInterrupted

# ----------------------------------------------------------------------------- losses

COUNTS = [500, 120, 40, 12, 3]
LABELS = torch.tensor([0, 2, 4, 1])


def logits() -> torch.Tensor:
    """[B=4, E=3, C=5] expert logits."""
    return torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(20230618)) * 4


# official mix_outputs: (loss, d loss / d logits flattened [B, E, C])
OFFICIAL = {
    "train": (
        55.10203028797939,
        [
            -0.25045139, 0.67864239, -0.28151965, -0.066131845, -0.065770589,
            -0.25036088, -0.47701451, -0.076303437, -0.029891426, 0.81948572,
            -0.24920636, -0.49021488, 0.80365455, -0.021258255, -0.057059575,
            0.30547312, 0.50825655, -0.24491368, -0.033159662, -0.54898703,
            -0.021450428, -0.029532202, -0.25052136, 0.84584749, -0.54966491,
            -0.022669071, -0.029157966, -0.25051501, -0.049135283, 0.36936808,
            -0.093254641, -0.49464843, 0.86718267, -0.028426781, -0.25117853,
            0.81092817, -0.49364638, -0.071644217, -0.02766007, -0.25016722,
            -0.089531898, 0.5150314, -0.071645722, -0.097978838, -0.25015822,
            0.03461007, -0.099288277, 0.055460691, -0.43436176, 0.4136616,
            -0.0013738817, -0.26388788, 0.7989645, -0.53118056, -0.21588637,
            -0.0021064198, -0.26322961, -0.094286256, 0.62043452, -0.039027002,
        ],
    ),
    "retrain": (
        22.914711132645607,
        [
            -0.24967214, 0.24338947, 0.0047770781, 0.0014532156, 5.2365398e-05,
            -0.22447319, 0.12012498, 0.0038931405, 0.00021650019, 0.10023856,
            -0.23270051, 0.0014229167, 0.22973117, 0.001063286, 0.00048312629,
            0.18774027, 0.061652455, -0.24962245, 0.00022945083, 2.9263907e-07,
            0.14570954, 0.0084155956, -0.24999756, 0.095824264, 4.8162659e-05,
            0.00096813979, 4.8313643e-05, -0.24999835, 4.4481618e-09, 0.24898188,
            0.024981773, 0.0014090429, 0.22332339, 0.00023704536, -0.24995124,
            0.24998149, 1.7986878e-05, 6.9617599e-08, 3.309224e-07, -0.24999988,
            0.0026497487, 0.24598007, 6.3851718e-07, 0.0013694055, -0.2499999,
            0.060412221, -0.10483773, 0.032631312, 0.0058553894, 0.0059388159,
            1.8567864e-05, -0.24998631, 0.24961227, 8.5353422e-06, 0.00034691585,
            0.0010822661, -0.21656086, 0.0009195056, 0.21423638, 0.00032271203,
        ],
    ),
}  # fmt: skip


def _loss(stage: str):
    return DKTLoss() if stage == "train" else RetrainLoss(COUNTS)


@pytest.mark.parametrize("stage", ["train", "retrain"])
@pytest.mark.parametrize("targets", ["integer", "one_hot"])
def test_losses_equal_the_official_code_in_value_and_gradient(stage, targets):
    z = logits().requires_grad_(True)
    target = LABELS if targets == "integer" else torch.eye(5)[LABELS]
    loss = _loss(stage)(z, target)
    loss.backward()
    value, grad = OFFICIAL[stage]
    assert loss.dtype == torch.float32
    # the gradient differs if the teacher or the peers' softmax were detached (the official code detaches nothing)
    assert loss.item() == pytest.approx(value, abs=1e-5)
    torch.testing.assert_close(z.grad.flatten(), torch.tensor(grad), atol=1e-5, rtol=0)


def _softmax(v: list[float]) -> list[float]:
    e = [math.exp(x - max(v)) for x in v]
    return [x / sum(e) for x in e]


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) summed over classes."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def test_dkt_by_hand_from_the_equations():
    # one sample, two experts, three classes, target 0
    z1, z2 = [1.0, 3.0, -2.0], [2.0, -1.0, 0.5]
    zbar = [(a + b) / 2 for a, b in zip(z1, z2)]  # [1.5, 1.0, -0.75]: hardest negative = class 1
    zmax = [max(a, b) for a, b in zip(z1, z2)]
    teacher = _softmax([0.0, zbar[1], zmax[2]])  # logit 0 at the target, ensemble mean at h, max elsewhere
    expected = 0.0
    for me, other in ((z1, z2), (z2, z1)):
        expected += -math.log(_softmax(me)[0])
        q = _softmax([-30.0, me[1], me[2]])
        expected += 10.0 * _kl(teacher, q) / 3  # element mean: batch-mean KL / C
        expected += _kl(_softmax(other), _softmax(me)) / 3
    loss = DKTLoss()(torch.tensor([[z1, z2]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_dkt_of_zero_logits_is_the_cross_entropy_and_a_uniform_teacher():
    e, c = 3, 5
    q_rest = 1 / (c - 1 + math.exp(-30))  # q at every non-target class
    kl = ((c - 1) * math.log((1 / c) / q_rest) + math.log((1 / c) / (math.exp(-30) * q_rest))) / c
    expected = e * (math.log(c) + 10.0 * kl / c)  # mutual terms vanish
    assert DKTLoss()(torch.zeros(2, e, c), torch.tensor([1, 4])).item() == pytest.approx(expected, rel=1e-6)


def test_retrain_loss_by_hand():
    z = torch.zeros(1, 3, 5)
    expected = 3 * -(math.log(COUNTS[2]) - math.log(sum(COUNTS)))  # softmax(log n) = n / sum n
    assert RetrainLoss(COUNTS)(z, torch.tensor([2])).item() == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- schedules

# official log cifar100_LT_IF100.log, "Adjusting learning rate" lines (utils.CosineAnnealingLRWarmup,
# stepped once per epoch; the first line of each scheduler is its epoch-0 lr)
OFFICIAL_TRAIN_LR = {
    0: "2.5000e-02", 1: "5.0000e-02", 2: "7.5000e-02", 3: "1.0000e-01", 4: "1.2500e-01", 5: "1.5000e-01",
    6: "1.4999e-01", 50: "1.2683e-01", 100: "6.4933e-02", 150: "1.0616e-02", 175: "3.0193e-04",
    179: "1.2085e-05",
}  # fmt: skip
OFFICIAL_RETRAIN_LR = [
    "3.7500e-02", "5.0000e-02", "6.2500e-02", "7.5000e-02", "8.7500e-02", "1.0000e-01", "9.8907e-02",
    "9.5677e-02", "9.0451e-02", "8.3457e-02", "7.5000e-02", "6.5451e-02", "5.5226e-02", "4.4774e-02",
    "3.4549e-02", "2.5000e-02", "1.6543e-02", "9.5492e-03", "4.3227e-03", "1.0926e-03",
]  # fmt: skip


def test_paper_schedules_give_the_official_learning_rates():
    cfg = _apply(SHIKE.presets["paper"]["cifar100_lt"])
    spe = 3  # per-epoch schedules: every step of an epoch has the epoch's lr
    stage = cfg.stages["train"]
    lr = make_schedule(stage.schedule, stage.optim.lr, spe, stage.epochs)
    for epoch, logged in OFFICIAL_TRAIN_LR.items():
        assert f"{lr(epoch * spe):.4e}" == logged and lr(epoch * spe + 2) == lr(epoch * spe)
    stage = cfg.stages["retrain"]
    lr = make_schedule(stage.schedule, stage.optim.lr, spe, stage.epochs)
    assert [f"{lr(e * spe + 1):.4e}" for e in range(20)] == OFFICIAL_RETRAIN_LR


# ----------------------------------------------------------------------------- model


def test_dkf_model_has_the_official_structure_and_size():
    net = create_model("resnet32_dkf_experts", num_classes=100)
    assert isinstance(net, DepthFusionNet) and net.num_experts == 3
    # official networks.resnet32(num_classes=100, use_norm=True, num_exps=3), both head sets
    assert sum(p.numel() for p in net.parameters()) == 1_277_008
    assert net.taps == [1, 2, 1]  # layer1, layer2, layer1
    convs = [[m.out_channels for m in s if isinstance(m, torch.nn.Conv2d)] for s in net.shallow]
    relus = [sum(isinstance(m, torch.nn.ReLU) for m in s) for s in net.shallow]
    assert convs == [[32, 64], [64], [32, 64]] and relus == [1, 1, 1]
    block = net.tails[0][0]
    assert isinstance(block.shortcut[0], torch.nn.Conv2d)  # option B
    out = net(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 3, 100) and out.features.shape == (2, 3, 64)
    assert out.logits.abs().max() <= 30.0 + 1e-4  # cosine heads, s = 30


def test_resnet8_dkf_model_is_resnet32_less_four_blocks_per_stage():
    small = create_model("resnet8_dkf_experts", num_classes=100)
    assert [len(s) for s in small.trunk[1:]] == [1, 1] and [len(t) for t in small.tails] == [1, 1, 1]
    # 4 blocks fewer in layer1 (16->16: 2 * 16*16*9 + 2 * 32 BN), layer2 (32->32: 2 * 32*32*9 + 2 * 64)
    # and every expert's layer3 (64->64: 2 * 64*64*9 + 2 * 128); stem, shortcuts, DKF and heads unchanged
    fewer = 4 * 4672 + 4 * 18560 + 3 * 4 * 73984
    assert sum(p.numel() for p in small.parameters()) == 1_277_008 - fewer
    assert small(torch.randn(2, 3, 32, 32)).logits.shape == (2, 3, 100)


# official networks.resnet32(num_classes=4, use_norm=True, num_exps=3) in eval mode, every float
# tensor of its state_dict (in its order) filled by _fill below, on randn(2, 3, 32, 32) drawn with
# seed 11: logits [B, E, C] of ``classifiers`` and of ``rt_classifiers`` (forward(x, crt=True))
OFFICIAL_NET = {
    False: [
        -3.12575, -1.330971, -0.9199544, -5.235229, -4.846932, 4.509148, 3.576749, -6.348228, 0.9165225,
        -6.172522, -1.497203, 1.952293, -2.987247, -1.127752, -1.153682, -5.073837, -4.889985, 4.545888,
        3.66508, -6.452462, 1.258659, -5.925704, -1.257126, 2.235734,
    ],
    True: [
        0.8651852, 0.3791636, 3.863361, -0.9830055, 7.927682, -3.418447, 2.246196, 5.213691, -2.122427,
        4.261981, 3.855523, 2.207488, 0.6841939, 0.6645625, 3.849108, -1.4104, 7.976577, -3.551094,
        2.176361, 5.210941, -2.593744, 4.763254, 3.889468, 2.100529,
    ],
}  # fmt: skip


def _fill(named_tensors) -> None:
    """Deterministic weights: BN scales and running variances in [0.5, 1.5), convolutions
    uniform(+-sqrt(3 / fan_in)), everything else in [-0.1, 0.1)."""
    g = torch.Generator().manual_seed(7)
    for name, t in named_tensors:
        if not t.dtype.is_floating_point:
            continue
        u = torch.rand(t.shape, generator=g, dtype=torch.float64)
        if name.endswith("running_var") or (t.ndim == 1 and name.endswith("weight")):
            v = 0.5 + u
        elif t.ndim == 4:
            v = (2 * u - 1) * (3 / t[0].numel()) ** 0.5
        else:
            v = 0.2 * u - 0.1
        t.copy_(v.to(t.dtype))


def test_dkf_model_computes_what_the_official_network_computes():
    net = create_model("resnet32_dkf_experts", num_classes=4).eval()
    state = net.state_dict()
    # the official state_dict order: conv1/bn1/layer1/layer2, layer3s, classifiers, rt_classifiers, shallow_exps
    order = [
        (k, v)
        for group in ("trunk", "tails", "heads", "rt_heads", "shallow")
        for k, v in state.items()
        if k.startswith(group + ".")
    ]
    assert len(order) == len(state)
    with torch.no_grad():
        _fill(order)
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
        for retrained, expected in OFFICIAL_NET.items():
            got = net(x, retrained=retrained).logits.flatten()
            torch.testing.assert_close(got, torch.tensor(expected), atol=2e-5, rtol=1e-5)


def test_fusion_is_the_product_of_deep_and_shallow_features():
    net = create_model("resnet32_dkf_experts", num_classes=4, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    shared = net.forward_trunk(x)
    assert [t.shape[1:] for t in shared[1:]] == [(16, 28, 28), (32, 14, 14)]
    for k in range(3):
        fused = net.tails[k](shared[-1]) * net.shallow[k](shared[net.taps[k]])
        torch.testing.assert_close(net.expert_feature(shared, k), fused.mean((2, 3)))
    out, rt = net(x), net(x, retrained=True)
    torch.testing.assert_close(out.features, rt.features)
    torch.testing.assert_close(rt.logits, net.classify(out.features, retrained=True))
    assert not torch.allclose(out.logits, rt.logits)


def _method(arch: str = "resnet32_dkf_experts", sets: tuple[str, ...] = (), classes: int = 5) -> SHIKE:
    cfg = resolve_config("shike", "synthetic_lt", "smoke", [f"model.arch={arch}", *sets])
    counts = np.maximum(1, (500 * 0.96 ** np.arange(classes)).astype(int))
    return SHIKE(cfg, DataInfo(num_classes=classes, in_chans=3, image_size=32, train_counts=counts))


def test_only_dkf_backbones_are_accepted():
    with pytest.raises(ConfigError, match="depth-wise knowledge fusion"):
        _method("resnet32_experts")
    with pytest.raises(ConfigError, match="at least one expert"):
        _method(sets=("method.num_experts=0",))


def test_stages_train_the_right_heads_and_retraining_updates_batchnorm_statistics():
    torch.manual_seed(0)
    method = _method()
    batch = Batch([torch.randn(8, 3, 32, 32)], torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]), torch.arange(8))
    method.enter_stage("train")
    method.set_train_mode("train")
    method.train_step(batch, StepContext("train", 1, 2, 0, 1))["loss"].backward()
    assert all(p.grad is None for p in method.net.rt_heads.parameters())
    assert all(p.grad is not None for n, p in method.net.named_parameters() if not n.startswith("rt_heads"))
    method.zero_grad(set_to_none=True)
    method.enter_stage("retrain")
    method.set_train_mode("retrain")
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in method.named_parameters() if n.startswith("net.rt_heads")}
    bn = method.net.trunk[0].bn
    before = bn.running_mean.clone()
    method.train_step(batch, StepContext("retrain", 1, 1, 0, 1))["loss"].backward()
    assert not torch.equal(bn.running_mean, before)  # official: model.train() in stage 2
    assert all(p.grad is not None for p in method.net.rt_heads.parameters())
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method.predict(batch.x), method.net(batch.x, retrained=True).mean_logits)
        heads = method.predict_heads(batch.x)
        assert set(heads) == {"expert1", "expert2", "expert3", "stage1"}
        torch.testing.assert_close(heads["stage1"], method.net(batch.x).mean_logits)


def test_without_retraining_prediction_uses_the_stage1_heads():
    method = _method(sets=("stages.retrain.epochs=0",))
    method.enter_stage("train")
    method.enter_stage("retrain")
    method.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(method.predict(x), method.net(x).mean_logits)
        assert set(method.predict_heads(x)) == {"expert1", "expert2", "expert3"}
    assert all(p.requires_grad for n, p in method.net.named_parameters() if not n.startswith("rt_heads"))


# ----------------------------------------------------------------------------- paper scale


def test_paper_scale_model_takes_a_step_in_each_stage():
    torch.manual_seed(0)
    cfg = resolve_config("shike", "cifar100_lt", "paper")
    counts = np.array([int(500 * 0.01 ** (i / 99)) for i in range(100)])
    method = SHIKE(cfg, DataInfo(num_classes=100, in_chans=3, image_size=32, train_counts=counts))
    batch = Batch([torch.randn(2, 3, 32, 32)], torch.tensor([3, 99]), torch.arange(2))
    for stage in ("train", "retrain"):
        take_step(method, stage, batch, 1, 1)
        opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
        opt.step()
        opt.zero_grad()
    method.eval()
    with torch.no_grad():
        assert method.predict(batch.x).shape == (2, 100)


@pytest.mark.slow
def test_imagenet_extension_builds_and_takes_a_step():
    torch.manual_seed(0)
    net = create_model("resnet50_dkf_experts", num_classes=10)
    assert net.taps == [1, 2, 3]
    assert [sum(isinstance(m, torch.nn.Conv2d) for m in s) for s in net.shallow] == [3, 2, 1]
    out = net(torch.randn(2, 3, 64, 64))
    assert out.features.shape == (2, 3, 2048)
    DKTLoss()(out.logits, torch.tensor([1, 7])).backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if not n.startswith("rt_heads"))


def test_imagenet_extension_model_size_by_hand():
    """The ResNet-50 DKF model at 1,000 classes, counted on the meta device, against a count by
    hand: torchvision's ResNet-50 pieces, the DKF downsamplers (3x3 stride-2 convolutions without
    bias + BatchNorm from layer1/2/3 to 2048 channels) and 2 x 3 cosine heads (no bias)."""
    from torchvision.models import resnet50

    with torch.device("meta"):
        net = create_model("resnet50_dkf_experts", num_classes=1000)
        plain = resnet50()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    shared = count(plain) - count(plain.layer4) - count(plain.fc)
    downsamplers = sum(
        9 * c_in * c_out + 2 * c_out
        for chain in ([256, 512, 1024, 2048], [512, 1024, 2048], [1024, 2048])
        for c_in, c_out in zip(chain, chain[1:])
    )
    heads = 2 * 3 * 2048 * 1000
    assert count(net.shallow) == downsamplers == 67_257_344
    assert count(net) == shared + 3 * count(plain.layer4) + downsamplers + heads == 132_982_848
    assert 0.5 < downsamplers / count(net) < 0.51  # half of the model


# ----------------------------------------------------------------------------- presets


def _apply(preset: dict) -> Config:
    cfg = Config("shike", "x", SHIKEParams(), DataConfig(), {"train": StageConfig(), "retrain": StageConfig()})
    apply_overlay(cfg, preset)
    return cfg


def test_paper_preset_carries_the_official_hyperparameters():
    cfg = _apply(SHIKE.presets["paper"]["cifar100_lt"])
    t, r = cfg.stages["train"], cfg.stages["retrain"]
    assert cfg.model.arch == "resnet32_dkf_experts"
    assert (cfg.method.num_experts, cfg.method.scale, cfg.method.suppression_weight) == (3, 30.0, 10.0)
    assert (t.epochs, r.epochs, t.batch_size, r.batch_size) == (180, 20, 128, 128)
    assert t.augment == r.augment == ["autoaug_cutout"] and t.sampler == r.sampler == "instance"
    for stage, peak in ((t, 0.15), (r, 0.1)):
        o = stage.optim
        assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("sgd", peak, 0.9, False, 5e-4)
        assert (stage.schedule.name, stage.schedule.per, stage.schedule.warmup_epochs) == ("cosine", "epoch", 5)


@pytest.mark.parametrize("dataset", ["cifar100_lt", "cifar10_lt", "imagenet_lt", "inat2018", "places_lt"])
def test_paper_presets_resolve_with_known_recipes(dataset):
    cfg = resolve_registered("shike", dataset, "paper")
    expected = "resnet32_dkf_experts" if dataset.startswith("cifar") else "resnet50_dkf_experts"
    assert cfg.model.arch == expected
    classes = {"cifar100_lt": 100, "cifar10_lt": 10, "imagenet_lt": 1000, "inat2018": 8142, "places_lt": 365}
    assert cfg.method.suppression_weight == pytest.approx(0.1 * classes[dataset])  # official 10 / 100 classes


def test_cpu_preset_resolves_for_fmnist_lt():
    cfg = resolve_config("shike", "fmnist_lt", "cpu")
    t, r = cfg.stages["train"], cfg.stages["retrain"]
    assert cfg.model.arch == "resnet8_dkf_experts"  # the cpu presets' ResNet-8
    assert t.epochs + r.epochs == 30  # the budget of ce's cpu preset
    assert t.augment == r.augment == ["pad_crop_flip"] and (t.optim.lr, r.optim.lr) == (
        0.1,
        0.1,
    )  # stage-1 peak chosen on val
    assert cfg.method.suppression_weight == pytest.approx(1.0)


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.slow
def test_smoke_run_reports_the_heads_and_resumes_mid_stage(tmp_path):
    cfg = resolve_config("shike", "synthetic_lt", "smoke", SMALL_SYNTHETIC)
    reference = train(cfg, tmp_path / "reference", progress=False).record
    assert reference["selection"]["stage"] == "retrain"
    assert set(reference["splits"]["test"]["heads"]) == {"main", "expert1", "expert2", "expert3", "stage1"}
    # stop inside epoch 1 of stage train (5 steps per epoch), then inside stage retrain
    for stop_after in (3, 12):
        out = tmp_path / f"stopped{stop_after}"
        with pytest.raises(TrainingInterrupted):
            train(cfg, out, progress=False, on_trainer=stop_at_step(stop_after))
        resumed = train(cfg, out, progress=False).record
        assert resumed["resumes"] == 1
        assert final_results(resumed) == final_results(reference)
