"""MDCS: the loss against the official code and by hand, the two-view training step, prediction,
the ImageNet-style strong view, Places-LT parameter groups and pretrained initialisation, the
official schedules, presets, the paper-scale models and whole runs (resume mid-stage).

Reference numbers marked "official" were computed by running a transcription of
fistyee/MDCS @ 1a1d54e ``model/loss.py::MDCSLoss.forward`` on the CPU in float32 (its ``.cuda()``
calls removed, the unused buffers dropped), called as ``trainer/trainer.py`` does: the logits of
the weak rows followed by the strong rows (``cat([view1, view2])``), the target repeated twice,
``extra_info = {"logits": [expert0, expert1, expert2], "epoch": epoch}``; value and d loss / d
logits of both views on the inputs of :func:`scenario`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_SYNTHETIC, final_results, long_tailed_info, resolve_registered, stop_at_step, take_step
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from ltbench.config import Config, StageConfig, apply_overlay, resolve_config
from ltbench.data import Batch, seeded
from ltbench.errors import ConfigError
from ltbench.filelists import FileListParams
from ltbench.losses import log_count_power
from ltbench.method import DataInfo, StepContext
from ltbench.methods.mdcs import MDCS, MDCSLoss, MDCSParams
from ltbench.models import create_model
from ltbench.models.multi_expert import load_resnet_weights
from ltbench.optim import make_schedule
from ltbench.runner import train
from ltbench.trainer import TrainingInterrupted


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the MDCS loss

COUNTS = [500, 120, 40, 12, 3]


def scenario(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weak [4, 3, 5], strong [4, 3, 5], target [4]). Confident weak rows per expert (adjusted
    argmax = label): "mixed" 1 / 0 / 1, "confident" 4 / 4 / 3, "none" 0 / 0 / 0."""
    if name == "mixed":
        g = torch.Generator().manual_seed(20230101)
        target = torch.tensor([0, 2, 4, 1])
        return torch.randn(4, 3, 5, generator=g) * 4, torch.randn(4, 3, 5, generator=g) * 4, target
    if name == "confident":
        g, target, boost = torch.Generator().manual_seed(7), torch.tensor([4, 3, 0, 2]), 9.0
        noise = 3.0
    else:
        g, target, boost = torch.Generator().manual_seed(11), torch.tensor([1, 2, 3, 4]), -30.0
        noise = 2.0
    weak = torch.randn(4, 3, 5, generator=g) * noise + boost * F.one_hot(target, 5).float().unsqueeze(1)
    return weak, torch.randn(4, 3, 5, generator=g) * 2, target


# official loss value per (scenario, 1-based epoch): the CS ramp is epoch / 20 up to epoch 20
OFFICIAL_VALUES = {
    ("mixed", 1): 15.700256,
    ("mixed", 5): 17.215984,
    ("mixed", 20): 22.899961,
    ("mixed", 30): 22.899961,
    ("confident", 1): 8.648057,
    ("confident", 5): 9.9517727,
    ("confident", 20): 14.840708,
    ("confident", 30): 14.840708,
    ("confident", 10): 11.581418,
    ("none", 1): 56.133842,
    ("none", 5): 56.133842,
    ("none", 20): 56.133842,
    ("none", 30): 56.133842,
}

OFFICIAL_GRADIENTS = {
    ("mixed", 5): (
        [
            -0.12486674,
            0.00020754129,
            0.0022260314,
            0.12227138,
            0.00016178074,
            -0.069990113,
            0.0042452742,
            0.062596872,
            7.6123911e-07,
            0.0031472112,
            -0.089726716,
            0.0046432493,
            0.022360269,
            0.062716842,
            6.372622e-06,
            0.0018656615,
            1.0660415e-05,
            -0.0018909276,
            1.4022343e-05,
            5.8262009e-07,
            0.12433124,
            1.7385009e-05,
            -0.12487345,
            7.5243537e-05,
            0.0004495813,
            0.12497055,
            3.0370185e-08,
            -0.12499995,
            2.4108087e-06,
            2.6968704e-05,
            5.3655287e-05,
            0.0022415549,
            0.0013201019,
            0.10369374,
            -0.10730905,
            0.11545701,
            0.00020124926,
            0.00066554092,
            0.00070224714,
            -0.11702603,
            0.00014542893,
            0.12484588,
            4.4874341e-08,
            8.6106038e-06,
            -0.12499997,
            0.00029611576,
            -0.12495618,
            0.0036818713,
            0.11100388,
            0.0099743195,
            0.11426265,
            -0.12377283,
            3.9563474e-05,
            0.0094371308,
            3.3479879e-05,
            0.011449223,
            -0.011818156,
            0.00034212047,
            2.6787173e-05,
            2.9705928e-08,
        ],
        [
            -0.12436869,
            0.0010172434,
            0.00028123133,
            0.11401117,
            0.0090590464,
            -0.12461206,
            0.052691527,
            0.014392482,
            0.0029790974,
            0.054548964,
            -0.10038801,
            0.097306617,
            0.0025830558,
            0.00049823447,
            9.4595947e-08,
            -0.0013416392,
            6.7408168e-05,
            -0.27272671,
            0.2739965,
            4.4168983e-06,
            0.0011011513,
            0.10629202,
            -0.12472294,
            0.0018047027,
            0.015525059,
            0.0044856761,
            0.00040195364,
            -0.0048876405,
            2.0226816e-08,
            3.1669405e-09,
            0.0007092728,
            7.7945306e-06,
            0.1194665,
            7.8970515e-06,
            -0.12019147,
            0.10402673,
            0.00019107223,
            0.014713704,
            0.005964912,
            -0.12489642,
            0.12483941,
            4.4152748e-05,
            6.4864256e-09,
            9.5233831e-05,
            -0.12497879,
            3.741296e-05,
            -0.12495198,
            0.047975197,
            0.014813054,
            0.06212632,
            0.031766813,
            -0.03737215,
            0.0037208775,
            0.00093111891,
            0.00095334882,
            0.22491044,
            -0.23049101,
            0.00091629522,
            0.004662849,
            1.3912386e-06,
        ],
    ),
    ("mixed", 30): (
        [
            -0.12486674,
            0.00020754129,
            0.0022260314,
            0.12227138,
            0.00016178074,
            -0.069990113,
            0.0042452742,
            0.062596872,
            7.6123911e-07,
            0.0031472112,
            -0.089726716,
            0.0046432493,
            0.022360269,
            0.062716842,
            6.372622e-06,
            0.0018656615,
            1.0660415e-05,
            -0.0018909276,
            1.4022343e-05,
            5.8262009e-07,
            0.12433124,
            1.7385009e-05,
            -0.12487345,
            7.5243537e-05,
            0.0004495813,
            0.12497055,
            3.0370185e-08,
            -0.12499995,
            2.4108087e-06,
            2.6968704e-05,
            5.3655287e-05,
            0.0022415549,
            0.0013201019,
            0.10369374,
            -0.10730905,
            0.11545701,
            0.00020124926,
            0.00066554092,
            0.00070224714,
            -0.11702603,
            0.00014542893,
            0.12484588,
            4.4874341e-08,
            8.6106038e-06,
            -0.12499997,
            0.00029611576,
            -0.12495618,
            0.0036818713,
            0.11100388,
            0.0099743195,
            0.11426265,
            -0.12377283,
            3.9563474e-05,
            0.0094371308,
            3.3479879e-05,
            0.011449223,
            -0.011818156,
            0.00034212047,
            2.6787173e-05,
            2.9705928e-08,
        ],
        [
            -0.12436869,
            0.0010172434,
            0.00028123133,
            0.11401117,
            0.0090590464,
            -0.12461206,
            0.052691527,
            0.014392482,
            0.0029790974,
            0.054548964,
            -0.10038801,
            0.097306617,
            0.0025830558,
            0.00049823447,
            9.4595947e-08,
            -0.0065899496,
            0.00016026813,
            -0.71591252,
            0.72233146,
            1.0691172e-05,
            0.0011011513,
            0.10629202,
            -0.12472294,
            0.0018047027,
            0.015525059,
            0.0044856761,
            0.00040195364,
            -0.0048876405,
            2.0226816e-08,
            3.1669405e-09,
            0.0007092728,
            7.7945306e-06,
            0.1194665,
            7.8970515e-06,
            -0.12019147,
            0.10402673,
            0.00019107223,
            0.014713704,
            0.005964912,
            -0.12489642,
            0.12483941,
            4.4152748e-05,
            6.4864256e-09,
            9.5233831e-05,
            -0.12497879,
            3.741296e-05,
            -0.12495198,
            0.047975197,
            0.014813054,
            0.06212632,
            0.031766813,
            -0.03737215,
            0.0037208775,
            0.00093111891,
            0.00095334882,
            0.57421064,
            -0.58831936,
            0.0018558537,
            0.012249131,
            3.6192009e-06,
        ],
    ),
    ("confident", 1): (
        [
            1.6825399e-07,
            1.3178338e-05,
            0.00010330784,
            1.9745633e-07,
            -0.00011684746,
            0.023464922,
            0.00034982085,
            5.4659173e-05,
            0.003857367,
            -0.027726777,
            0.03851831,
            0.0088642985,
            0.018945936,
            0.002326363,
            -0.06865491,
            1.9448666e-07,
            1.3073694e-10,
            9.8653894e-09,
            -2.3841858e-07,
            3.5439633e-08,
            0.008022951,
            0.011090323,
            0.007992995,
            -0.027120426,
            1.4164084e-05,
            0.12445963,
            2.8869472e-05,
            0.00015258382,
            -0.12464608,
            5.0031831e-06,
            -0.020833209,
            2.3524361e-05,
            0.0018744403,
            0.0040977895,
            0.014837458,
            -5.9604645e-08,
            6.6220245e-08,
            1.7160938e-10,
            3.1233561e-11,
            1.5233785e-11,
            -0.0016624108,
            0.00140902,
            0.00025338534,
            3.8185952e-09,
            5.7577543e-10,
            1.7444665e-05,
            2.0470895e-07,
            -0.00024485588,
            6.8455163e-05,
            0.00015873607,
            0.00064100657,
            0.0079535758,
            -0.0086112767,
            1.7617881e-06,
            1.4928002e-05,
            0.00089842716,
            4.6159641e-07,
            -0.00089897215,
            8.4606079e-08,
            4.2234369e-10,
        ],
        [
            0.003145074,
            0.0022933665,
            0.069128543,
            0.056999568,
            -0.13156654,
            0.083671302,
            0.028546443,
            0.0056085908,
            0.011718475,
            -0.12954481,
            0.12199041,
            0.0074491645,
            0.00010370929,
            -6.0841521e-05,
            -0.12948246,
            0.013053514,
            0.034666978,
            0.061351076,
            -0.11694077,
            0.0078692092,
            0.018977562,
            0.071042433,
            0.037246894,
            -0.13072278,
            0.0034559001,
            0.12001909,
            0.0048245694,
            0.00012419287,
            -0.12498069,
            1.284133e-05,
            -0.13113154,
            0.094783537,
            0.0054159365,
            0.006149455,
            0.024782632,
            -0.10410587,
            0.016563034,
            0.027912704,
            0.054921929,
            0.0047082067,
            -0.020846156,
            0.020525999,
            0.00031949446,
            3.6671887e-07,
            2.8766672e-07,
            0.021082051,
            7.2692601e-05,
            -0.13111009,
            0.10809503,
            0.0018603033,
            0.010585221,
            0.091055304,
            -0.12524854,
            0.023430733,
            0.00017727335,
            0.13383479,
            0.00091249269,
            -0.13480264,
            5.5042132e-05,
            3.032568e-07,
        ],
    ),
    ("confident", 10): (
        [
            1.6825399e-07,
            1.3178338e-05,
            0.00010330784,
            1.9745633e-07,
            -0.00011684746,
            0.023464922,
            0.00034982085,
            5.4659173e-05,
            0.003857367,
            -0.027726777,
            0.03851831,
            0.0088642985,
            0.018945936,
            0.002326363,
            -0.06865491,
            1.9448666e-07,
            1.3073694e-10,
            9.8653894e-09,
            -2.3841858e-07,
            3.5439633e-08,
            0.008022951,
            0.011090323,
            0.007992995,
            -0.027120426,
            1.4164084e-05,
            0.12445963,
            2.8869472e-05,
            0.00015258382,
            -0.12464608,
            5.0031831e-06,
            -0.020833209,
            2.3524361e-05,
            0.0018744403,
            0.0040977895,
            0.014837458,
            -5.9604645e-08,
            6.6220245e-08,
            1.7160938e-10,
            3.1233561e-11,
            1.5233785e-11,
            -0.0016624108,
            0.00140902,
            0.00025338534,
            3.8185952e-09,
            5.7577543e-10,
            1.7444665e-05,
            2.0470895e-07,
            -0.00024485588,
            6.8455163e-05,
            0.00015873607,
            0.00064100657,
            0.0079535758,
            -0.0086112767,
            1.7617881e-06,
            1.4928002e-05,
            0.00089842716,
            4.6159641e-07,
            -0.00089897215,
            8.4606079e-08,
            4.2234369e-10,
        ],
        [
            0.0047471961,
            0.0034549716,
            0.10429234,
            0.08603698,
            -0.19853148,
            0.11434247,
            0.042910758,
            0.008437952,
            0.015723191,
            -0.18141438,
            0.17763849,
            0.0065057427,
            -0.012457774,
            -0.0016523112,
            -0.17003417,
            0.019703317,
            0.052327514,
            0.092605397,
            -0.17651424,
            0.011878034,
            0.024558213,
            0.10158408,
            0.052149825,
            -0.18350133,
            0.0052092373,
            0.12001909,
            0.0048245694,
            0.00012419287,
            -0.12498069,
            1.284133e-05,
            -0.18732128,
            0.1430575,
            0.007220095,
            0.0071946429,
            0.029849041,
            -0.15714091,
            0.025000772,
            0.042132385,
            0.082901023,
            0.0071067275,
            -0.033635326,
            0.03327065,
            0.00036356715,
            6.0865239e-07,
            4.7906065e-07,
            0.031813074,
            0.00010962039,
            -0.19777727,
            0.16312742,
            0.0027271393,
            0.01565114,
            0.13339014,
            -0.18466753,
            0.035366245,
            0.00025997759,
            0.22245903,
            0.0015205134,
            -0.22407176,
            9.1680486e-05,
            5.0514643e-07,
        ],
    ),
    ("none", 30): (
        [
            0.0023270582,
            -0.125,
            0.011276957,
            0.05335851,
            0.058037482,
            0.066018544,
            -0.125,
            0.036969692,
            0.019244326,
            0.0027674348,
            0.12499033,
            -0.125,
            9.5918076e-06,
            6.9367914e-08,
            7.723365e-11,
            0.024061475,
            0.081934035,
            -0.125,
            0.0059448071,
            0.013059681,
            0.1068382,
            0.0038984227,
            -0.125,
            0.013865841,
            0.00039754796,
            0.12036727,
            0.0044559371,
            -0.125,
            0.00017678499,
            9.4367394e-09,
            0.00040268051,
            0.11058915,
            0.012814274,
            -0.125,
            0.0011939008,
            0.082493871,
            0.040499169,
            0.0014914677,
            -0.125,
            0.00051548658,
            0.12471388,
            0.00019110084,
            9.5018331e-05,
            -0.125,
            3.4837475e-09,
            0.0037006943,
            0.025126902,
            0.094260707,
            0.0019116974,
            -0.125,
            0.028678218,
            0.048062351,
            0.047106542,
            0.0011528945,
            -0.125,
            0.12449445,
            0.00049206888,
            6.2816425e-06,
            7.2113339e-06,
            -0.125,
        ],
        [
            0.0083339904,
            -0.10796149,
            0.0058560111,
            8.0995553e-05,
            0.0936905,
            0.10362688,
            -0.10808711,
            0.0025910302,
            0.0012863516,
            0.0005828538,
            0.016085818,
            -0.018485129,
            0.0022951546,
            8.799533e-05,
            1.6150103e-05,
            0.0036193428,
            0.0048083141,
            -0.0093913153,
            0.00083204004,
            0.00013160806,
            0.11040585,
            0.0035831889,
            -0.12430358,
            0.010254286,
            6.0258699e-05,
            0.11867488,
            0.0020066695,
            -0.12180041,
            0.0011176651,
            1.1883058e-06,
            4.5619716e-05,
            0.052693639,
            0.0087786168,
            -0.068302915,
            0.0067850384,
            0.011440614,
            0.10745136,
            0.001446971,
            -0.12034085,
            1.9144813e-06,
            0.090688705,
            0.03182368,
            0.0023347461,
            -0.12485808,
            1.0948705e-05,
            0.0056344774,
            0.015583626,
            0.030007167,
            0.014534883,
            -0.065760143,
            0.00032769368,
            0.10215437,
            0.017440107,
            0.0049399561,
            -0.12486212,
            0.11056822,
            0.00198863,
            0.012442637,
            3.1829276e-07,
            -0.1249998,
        ],
    ),
}


def grads(name: str, epoch: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    weak, strong, target = scenario(name)
    weak.requires_grad_(True)
    strong.requires_grad_(True)
    loss = MDCSLoss(COUNTS)(weak, strong, target, epoch)
    loss.backward()
    return loss.item(), weak.grad, strong.grad


@pytest.mark.parametrize("key", sorted(OFFICIAL_VALUES))
def test_mdcs_loss_value_equals_the_official_code(key):
    value, _, _ = grads(*key)
    assert value == pytest.approx(OFFICIAL_VALUES[key], abs=1e-5, rel=1e-6)


@pytest.mark.parametrize("key", sorted(OFFICIAL_GRADIENTS))
def test_mdcs_loss_gradients_equal_the_official_code(key):
    _, weak_grad, strong_grad = grads(*key)
    official_weak, official_strong = (torch.tensor(g).view(4, 3, 5) for g in OFFICIAL_GRADIENTS[key])
    torch.testing.assert_close(weak_grad, official_weak, atol=1e-5, rtol=0)
    torch.testing.assert_close(strong_grad, official_strong, atol=1e-5, rtol=0)


def test_offsets_are_log_count_powers():
    loss = MDCSLoss(COUNTS)
    n = torch.tensor(COUNTS, dtype=torch.float64)
    for k, tau in enumerate((-0.5, 1.0, 2.5)):
        torch.testing.assert_close(loss.offsets[k].double(), tau * n.log(), atol=1e-5, rtol=0)
    assert log_count_power([4, 1], 2.0).tolist() == pytest.approx([math.log(16 + 1e-9), math.log(1 + 1e-9)])


def test_diversity_loss_by_hand():
    # zero logits: both views agree, so the KL is 0 and only sum_k CE(log n^tau_k, y) remains;
    # counts (4, 1), label 0: CE_k = log(1 + 4^-tau_k) -> log 3 + log 1.25 + log(33 / 32)
    zeros = torch.zeros(2, 3, 2)
    loss = MDCSLoss([4, 1])(zeros, zeros, torch.tensor([0, 0]), epoch=50)
    assert loss.item() == pytest.approx(math.log(3) + math.log(1.25) + math.log(33 / 32), abs=1e-6)


def test_consistency_term_by_hand_and_its_ramp():
    # one expert with tau = 0 (offset log(1 + 1e-9) ~ 0); weak logits (2, 0), strong (0, 0), label 0:
    # confident; p = softmax(2, 0), q = (1/2, 1/2): KL(p || q) = log 2 - H(p);
    # CE over both views = (log(1 + e^-2) + log 2) / 2
    weak = torch.tensor([[[2.0, 0.0]]])
    strong = torch.zeros(1, 1, 2, requires_grad=True)
    p = torch.softmax(weak[0, 0], 0)
    kl = math.log(2) + float((p * p.log()).sum())
    ce = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    for epoch, ramp in ((1, 0.05), (10, 0.5), (20, 1.0), (21, 1.0), (400, 1.0)):
        criterion = MDCSLoss([7, 7], taus=(0.0,))
        assert criterion.cs_factor(epoch) == pytest.approx(0.6 * ramp)
        loss = criterion(weak.clone().requires_grad_(True), strong, torch.tensor([0]), epoch)
        assert loss.item() == pytest.approx(ce + 0.6 * ramp * kl, abs=1e-6)
    # d/d strong = (q - onehot) / 2 from the CE (mean over 2 rows) + w (q - p) from the KL
    strong.grad = None
    MDCSLoss([7, 7], taus=(0.0,))(weak, strong, torch.tensor([0]), 20).backward()
    q = torch.tensor([0.5, 0.5])
    expected = (q - torch.tensor([1.0, 0.0])) / 2 + 0.6 * (q - p)
    torch.testing.assert_close(strong.grad[0, 0], expected, atol=1e-6, rtol=0)


def test_no_confident_sample_leaves_the_diversity_loss_and_weak_views_get_no_distillation_gradient():
    weak, strong, target = scenario("none")
    weak.requires_grad_(True)
    criterion = MDCSLoss(COUNTS)
    loss = criterion(weak, strong, target, 30)
    adjusted = torch.cat([weak, strong]) + criterion.offsets
    ce = sum(F.cross_entropy(adjusted[:, k], torch.cat([target, target])) for k in range(3))
    assert loss.item() == pytest.approx(ce.item(), abs=1e-5)
    # with confident samples, the weak view's gradient is its CE gradient alone, whatever the weight
    weak, strong, target = scenario("confident")
    got = []
    for weight in (0.0, 5.0):
        w = weak.clone().requires_grad_(True)
        MDCSLoss(COUNTS, cs_weight=weight)(w, strong, target, 30).backward()
        got.append(w.grad)
    torch.testing.assert_close(got[0], got[1])


def test_cs_warmup_zero_means_full_weight_and_expert_count_must_match():
    assert MDCSLoss(COUNTS, cs_warmup=0).cs_factor(1) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="taus"):
        MDCSLoss(COUNTS, taus=(1.0, 2.0))(*scenario("mixed"), 1)


# ----------------------------------------------------------------------------- the method


def smoke_mdcs(num_classes: int = 10, sets: tuple[str, ...] = ()) -> MDCS:
    cfg = resolve_config("mdcs", "synthetic_lt", "smoke", list(sets))
    return MDCS(cfg, DataInfo(num_classes, 3, 16, np.arange(num_classes, 0, -1) * 10))


def test_both_views_go_through_one_forward_pass():
    torch.manual_seed(0)
    method = smoke_mdcs()
    rows = []
    method.net.trunk.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    weak, strong, y = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 9, 1])
    method.train()
    loss = method.train_step(Batch([weak, strong], y, torch.arange(4)), StepContext("train", 3, 10, 0, 1))["loss"]
    assert rows == [8]  # BatchNorm statistics over 2B rows, as the official trainer
    method.eval()  # same logits again without updating the running statistics
    torch.manual_seed(0)
    fresh = smoke_mdcs()
    fresh.train()
    logits = fresh.net(torch.cat([weak, strong])).logits
    torch.testing.assert_close(loss, fresh.criterion(logits[:4], logits[4:], y, 3))


def test_bn_per_view_equals_two_forwards_by_hand_with_running_statistics_from_the_weak_view():
    """``method.bn_per_view``: as DataParallel over cat([weak, strong]) whose replicas each see one
    view: every view normalised with its own batch statistics, the running statistics (and batch
    counter) updated by the weak view only."""
    torch.manual_seed(0)
    method = smoke_mdcs(sets=("method.bn_per_view=true",))
    by_hand = copy.deepcopy(method)
    weak, strong, y = torch.randn(4, 3, 16, 16), 2 + 3 * torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 9, 1])
    method.train()
    loss = method.train_step(Batch([weak, strong], y, torch.arange(4)), StepContext("train", 3, 10, 0, 1))["loss"]
    loss.backward()

    by_hand.train()
    weak_logits = by_hand.net(weak).logits  # replica of the weak rows: updates the running statistics
    after_weak = copy.deepcopy(by_hand.net.state_dict())
    strong_logits = by_hand.net(strong).logits  # replica of the strong rows: its updates are dropped
    by_hand.net.load_state_dict(after_weak)
    torch.testing.assert_close(loss, by_hand.criterion(weak_logits, strong_logits, y, 3))
    for (name, ours), theirs in zip(method.net.state_dict().items(), after_weak.values()):
        torch.testing.assert_close(ours, theirs, msg=name)
    bns = [m for m in method.net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.track_running_stats and int(m.num_batches_tracked) == 1 for m in bns)
    assert all(p.grad is not None for p in method.net.parameters() if p.requires_grad)

    # not the one-pass normalisation over both views
    torch.manual_seed(0)
    joint = smoke_mdcs()
    joint.train()
    joint_loss = joint.train_step(Batch([weak, strong], y, torch.arange(4)), StepContext("train", 3, 10, 0, 1))
    assert not torch.allclose(joint_loss["loss"], loss)
    assert not torch.allclose(joint.net.state_dict()[BN_MEAN], method.net.state_dict()[BN_MEAN])


BN_MEAN = "trunk.0.bn.running_mean"


def test_prediction_is_the_mean_of_the_raw_expert_logits():
    torch.manual_seed(0)
    method = smoke_mdcs()
    method.eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        logits = method.net(x).logits
        torch.testing.assert_close(method.predict(x), logits.mean(1))
        heads = method.predict_heads(x)
    assert sorted(heads) == ["expert1", "expert2", "expert3"]
    torch.testing.assert_close(heads["expert3"], logits[:, 2])


def test_views_and_taus_are_checked():
    with pytest.raises(ConfigError, match="two views"):
        smoke_mdcs(sets=("stages.train.augment=default",))
    with pytest.raises(ConfigError, match="taus"):
        MDCS(_apply({"method": {"taus": []}, "stages": {"train": {"augment": ["a", "b"]}}}), info())
    with pytest.raises(ConfigError, match="multi-expert"):
        MDCS(_apply({"model": {"arch": "resnet32"}, "stages": {"train": {"augment": ["a", "b"]}}}), info())
    two = MDCS(_apply({**cfg_dict(), "method": {"taus": [0.0, 1.0]}}), info())
    assert two.net.num_experts == 2 and two.criterion.offsets.shape == (2, 10)


def info(num_classes: int = 10) -> DataInfo:
    return DataInfo(num_classes, 3, 16, np.arange(num_classes, 0, -1) * 10)


def _apply(preset: dict) -> Config:
    cfg = Config("mdcs", "x", MDCSParams(), FileListParams(), {"train": StageConfig()})  # has data.reindex
    apply_overlay(cfg, preset)
    return cfg


def test_places_param_groups_give_the_backbone_a_tenth_of_the_classifier_lr():
    cfg = _apply({"model": {"arch": "resnet10_experts"}, "method": {"backbone_lr_scale": 0.1}})
    cfg.stages["train"].augment = ["a", "b"]
    method = MDCS(cfg, info())
    groups = method.param_groups("train", cfg.stages["train"].optim)
    heads = {id(p) for p in method.net.heads.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(method.parameters()))
    for group in groups:
        in_heads = {id(p) in heads for p in group["params"]}
        assert len(in_heads) == 1  # a group holds classifiers only, or none
        assert group["lr_scale"] == (1.0 if in_heads == {True} else 0.1) and group["weight_decay"] == 5e-4
    plain = MDCS(_apply({"model": {"arch": "resnet10_experts"}, "stages": {"train": {"augment": ["a", "b"]}}}), info())
    assert {g["lr_scale"] for g in plain.param_groups("train", cfg.stages["train"].optim)} == {1.0}


def test_init_checkpoint_copies_layer3_and_layer4_into_every_expert(tmp_path):
    torch.manual_seed(0)
    single = ResNet(BasicBlock, [1, 1, 1, 1])  # torchvision layout, ResNet-10 widths
    path = tmp_path / "resnet10.pth"
    torch.save(single.state_dict(), path)
    cfg = _apply(
        {
            "model": {"arch": "resnet10_experts"},
            "method": {"reduce_dimension": False, "init_checkpoint": str(path)},
            "stages": {"train": {"augment": ["a", "b"]}},
        }
    )
    net = MDCS(cfg, info()).net
    src = single.state_dict()
    torch.testing.assert_close(net.trunk[0].weight, src["conv1.weight"])
    torch.testing.assert_close(net.trunk[1].running_var, src["bn1.running_var"])
    torch.testing.assert_close(net.trunk[5][0].downsample[0].weight, src["layer2.0.downsample.0.weight"])
    for k in range(3):
        torch.testing.assert_close(net.tails[k][0][0].conv2.weight, src["layer3.0.conv2.weight"])
        torch.testing.assert_close(net.tails[k][1][0].bn1.weight, src["layer4.0.bn1.weight"])
    loaded = load_resnet_weights(create_model("resnet10_experts", num_classes=10, reduce_dimension=False), src)
    assert not any(name.startswith("heads.") for name in loaded)
    with pytest.raises(ConfigError, match="does not fit"):  # a CIFAR ResNet-32 has other layers
        MDCS(_apply({**cfg_dict(), "method": {"init_checkpoint": str(path)}}), info())
    with pytest.raises(ConfigError, match="does not exist"):
        MDCS(_apply({**cfg_dict(), "method": {"init_checkpoint": str(tmp_path / "missing.pth")}}), info())


def cfg_dict() -> dict:
    return {"model": {"arch": "resnet32_experts"}, "stages": {"train": {"augment": ["a", "b"]}}}


def test_imagenet_strong_view_is_a_seeded_randaugment_crop():
    from ltbench.augment import RECIPES
    from ltbench.data import LTData

    data = LTData.__new__(LTData)
    data.image_size, data.mean, data.std = 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    recipe = RECIPES.get("rrc_jitter_randaug")(data)
    assert recipe.batch is None
    image = torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with seeded(5):
        a = recipe.sample(image)
    with seeded(5):
        b = recipe.sample(image)
    with seeded(6):
        c = recipe.sample(image)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    ops = [op.name for step in recipe.sample.transforms for op in getattr(step, "ops", ())]
    assert len(ops) == 15 and "Posterize" in ops  # timm's _RAND_TRANSFORMS, as the official list
    ra = next(step for step in recipe.sample.transforms if hasattr(step, "ops"))
    assert ra.num_layers == 2 and ra.ops[0].magnitude == 10 and ra.ops[0].magnitude_std == 0.5
    assert ra.ops[0].hparams["translate_const"] == 14  # int(0.45 * 32); official int(224 * 0.45) = 100


# ----------------------------------------------------------------------------- recipes


def official_custom_lr(step1: int, step2: int, step3: int | None, warmup: int, gamma: float = 0.1):
    """train.py ``lr_lambda`` of CustomLR (step3 optional, as in the configs)."""

    def lr_lambda(epoch: int) -> float:
        if step3 is not None and epoch >= step3:
            lr = gamma**3
        elif epoch >= step2:
            lr = gamma**2
        elif epoch >= step1:
            lr = gamma
        else:
            lr = 1.0
        if epoch < warmup:
            lr = lr * float(1 + epoch) / warmup
        return lr

    return lr_lambda


@pytest.mark.parametrize(
    "preset, dataset, lr, official",
    [
        ("paper", "cifar100_lt", 0.1, official_custom_lr(200, 320, 380, 20)),
        ("paper_short", "cifar100_lt", 0.1, official_custom_lr(160, 180, None, 20)),
        ("paper", "places_lt", 0.01, official_custom_lr(10, 20, None, 0)),
        ("paper", "inat2018", 0.2, official_custom_lr(200, 300, 380, 5)),
        ("paper_short", "inat2018", 0.2, official_custom_lr(60, 80, None, 5)),
        ("paper", "imagenet_lt", 0.1, None),
        ("paper_e180", "imagenet_lt", 0.1, None),
    ],
)
def test_schedules_are_the_official_lambda_lr_and_cosine_annealing(preset, dataset, lr, official):
    cfg = _apply(MDCS.presets[preset][dataset])
    stage = cfg.stages["train"]
    assert stage.optim.lr == lr
    spe = 2
    ours = make_schedule(stage.schedule, lr, spe, stage.epochs)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    if official is None:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=stage.epochs, eta_min=0)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, official)
    for epoch in range(stage.epochs):  # the official schedulers step once per epoch
        for j in range(spe):
            assert ours(epoch * spe + j) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()


def test_paper_presets_carry_the_official_hyperparameters():
    cifar = _apply(MDCS.presets["paper"]["cifar10_lt"])
    t = cifar.stages["train"]
    assert cifar.model.arch == "resnet32_experts" and cifar.method.taus == [-0.5, 1.0, 2.5]
    assert (cifar.method.cs_weight, cifar.method.cs_warmup, cifar.method.scale) == (0.6, 20, 30.0)
    assert (t.epochs, t.batch_size, t.augment) == (400, 64, ["pad_crop_flip_rotate", "autoaug_cutout"])
    assert (t.optim.lr, t.optim.weight_decay, t.optim.nesterov, t.optim.momentum) == (0.1, 5e-4, True, 0.9)
    for preset, arch, epochs in (
        ("paper", "resnext50_experts", 400),  # the README's command: config_imagenet_lt_resnext50_mdcs_e400.json
        ("paper_e180", "resnext50_experts", 180),
        ("paper_r50", "resnet50_experts", 400),
        ("paper_r50_e180", "resnet50_experts", 180),
    ):
        imnet = _apply(MDCS.presets[preset]["imagenet_lt"])
        t = imnet.stages["train"]
        assert imnet.model.arch == arch and imnet.method.reduce_dimension
        assert (t.epochs, t.batch_size, t.optim.lr, t.optim.weight_decay) == (epochs, 256, 0.1, 5e-4)
        assert t.augment == ["rrc_flip_jitter", "rrc_jitter_randaug"] and t.schedule.name == "cosine"
        assert imnet.method.bn_per_view  # "n_gpu": 4, DataParallel
        assert resolve_config("mdcs", "imagenet_lt", preset).train.precision == "fp32"  # no autocast
    places = _apply(MDCS.presets["paper"]["places_lt"])
    t = places.stages["train"]
    assert places.model.arch == "resnet152_experts" and not places.method.reduce_dimension
    assert places.method.backbone_lr_scale == pytest.approx(0.001 / 0.01) and places.method.init_checkpoint == ""
    assert places.data.reindex
    assert (t.epochs, t.batch_size, t.optim.lr, t.optim.weight_decay) == (30, 64, 0.01, 4e-4)
    assert places.method.bn_per_view and not cifar.method.bn_per_view  # 4 GPUs / 1 GPU
    inat = _apply(MDCS.presets["paper"]["inat2018"])
    t = inat.stages["train"]
    assert inat.model.arch == "resnet50_experts"
    assert (t.epochs, t.batch_size, t.optim.lr, t.optim.weight_decay) == (400, 512, 0.2, 2e-4)
    assert inat.method.bn_per_view and _apply(MDCS.presets["paper_short"]["inat2018"]).method.bn_per_view


@pytest.mark.parametrize(
    "preset, dataset",
    [
        ("paper", "cifar100_lt"),
        ("paper", "cifar10_lt"),
        ("paper", "imagenet_lt"),
        ("paper", "places_lt"),
        ("paper", "inat2018"),
        ("paper_r50", "imagenet_lt"),
        ("cpu", "fmnist_lt"),
    ],
)
def test_presets_resolve_with_known_recipes(preset, dataset):
    assert len(resolve_registered("mdcs", dataset, preset).stages["train"].augment) == 2


# ----------------------------------------------------------------------------- paper scale


def paper_step(arch: str, num_classes: int, size: int, sets: tuple[str, ...] = ()) -> MDCS:
    torch.manual_seed(0)
    cfg = resolve_config("mdcs", "synthetic_lt", "smoke", [f"model.arch={arch}", *sets])
    method = MDCS(cfg, long_tailed_info(num_classes, size, decay=0.99))
    views = [torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)]
    take_step(method, "train", Batch(views, torch.tensor([3, num_classes - 1]), torch.arange(2)), 21, 30)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.net.parameters())
    method.eval()
    with torch.no_grad():
        assert method.predict(views[0]).shape == (2, num_classes)
    return method


def test_paper_scale_resnext50_takes_a_training_step():
    paper_step("resnext50_experts", 1000, 224)


@pytest.mark.slow
def test_paper_scale_places_resnet152_takes_a_training_step():
    method = paper_step("resnet152_experts", 365, 64, ("method.reduce_dimension=false", "method.backbone_lr_scale=0.1"))
    # fistyee/MDCS Expert_ResNet.ResNet(Bottleneck, [3, 8, 36, 3], num_experts=3, num_classes=365,
    # reduce_dimension=False, share_layer3=False, use_norm=True): parameter count of the official model
    assert sum(p.numel() for p in method.net.parameters()) == 171_543_616


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.slow
def test_smoke_run_reports_every_expert_and_resumes_mid_stage(tmp_path):
    cfg = resolve_config("mdcs", "synthetic_lt", "smoke", SMALL_SYNTHETIC)
    reference = train(cfg, tmp_path / "reference", progress=False).record
    assert set(reference["splits"]["test"]["heads"]) == {"main", "expert1", "expert2", "expert3"}
    for stop_after in (3, 7):  # inside epoch 1 and inside epoch 2 (5 steps per epoch)
        out = tmp_path / f"stopped{stop_after}"
        with pytest.raises(TrainingInterrupted):
            train(cfg, out, progress=False, on_trainer=stop_at_step(stop_after))
        resumed = train(cfg, out, progress=False).record
        assert resumed["resumes"] == 1
        assert final_results(resumed) == final_results(reference)


def test_cpu_preset_shares_the_budget_and_schedule_of_the_rows_it_is_compared_with():
    # MDCS's fmnist_lt row sits beside `ride --preset cpu` and `ce --preset cpu_ride`: same epochs,
    # same step-decay epochs and warmup; only the decay factor is MDCS's own (CustomLR: x0.1 per step)
    mdcs = resolve_config("mdcs", "fmnist_lt", "cpu").stages["train"]
    for method, preset in (("ce", "cpu_ride"), ("ride", "cpu")):
        other = resolve_config(method, "fmnist_lt", preset).stages["train"]
        assert mdcs.epochs == other.epochs == 20
        assert (mdcs.schedule.name, mdcs.schedule.per) == (other.schedule.name, other.schedule.per) == ("step", "epoch")
        assert mdcs.schedule.milestones == other.schedule.milestones == [16, 18]
        assert mdcs.schedule.warmup_epochs == other.schedule.warmup_epochs == 2
    assert mdcs.schedule.gamma == 0.1
    assert resolve_config("mdcs", "fmnist_lt", "cpu").model.arch == "resnet8_experts"  # RIDE's cpu backbone
