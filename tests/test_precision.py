"""Precision as part of a recipe: fp32 heads under autocast, each paper preset's official
precision, and every method's smoke preset trained with bf16 autocast on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_SYNTHETIC, shipped_methods

from ltbench.config import resolve_config
from ltbench.losses import LDAMLoss
from ltbench.models import create_model
from ltbench.models.heads import FP32Linear, NormedLinear
from ltbench.registry import METHODS, load_plugins

load_plugins()


def test_cosine_head_and_ldam_loss_stay_fp32_under_bf16_autocast():
    """Scale-30 cosine logits in bf16 move in steps of 0.125 near 30 (fp16: 0.0156), the size of
    the LDAM margins; under autocast the head and the loss must give the fp32 values."""
    torch.manual_seed(0)
    head, x, y = NormedLinear(16, 10), torch.randn(8, 16), torch.arange(8)
    loss = LDAMLoss([100, 50, 30, 20, 10, 8, 5, 3, 2, 1], 30.0, 0.5, 0)
    reference = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
        value = loss(logits, y, 1)
    assert logits.dtype == torch.float32 and torch.equal(logits, reference)
    assert value.dtype == torch.float32 and torch.equal(value, loss(reference, y, 1))
    assert (reference.abs() > 2).any()  # logits large enough for bf16 to round them
    assert not torch.equal(reference.bfloat16().float(), reference)


@pytest.mark.parametrize("arch", ["resnet8", "vit", "resnet50", "deit_distilled"])
def test_backbone_classifiers_compute_in_fp32_under_autocast(arch):
    torch.manual_seed(0)
    kwargs = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32, "patch_size": 8}
    net = create_model(arch, num_classes=5, **kwargs).eval()
    heads = [m for m in net.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 5]
    assert heads and all(isinstance(m, FP32Linear) for m in heads)
    features = torch.randn(4, heads[0].in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = heads[0](features)
    assert out.dtype == torch.float32
    assert torch.allclose(out, F.linear(features, heads[0].weight, heads[0].bias), rtol=1e-6, atol=1e-6)


#: (train, eval) precision of each method's official code (the files cited beside the presets)
OFFICIAL = {
    "ce": ("fp32", "fp32"),  # kaidic/LDAM-DRW cifar_train.py: no autocast
    "la": ("fp32", "fp32"),  # google-research logit_adjustment/main.py: float32 Keras
    "ldam_drw": ("fp32", "fp32"),  # LDAM-DRW cifar_train.py, Saddle-LongTail cifar_train_sam.py
    "ride": ("fp32", "fp32"),  # utils.use_fp16 = False
    "mdcs": ("fp32", "fp32"),  # the RIDE template's use_fp16 = False
    "shike": ("fp16", "fp32"),  # cifarTrain.py: train() autocasts with a GradScaler, validate() does not
    "livt": ("fp16", "fp16"),  # engine_finetune.py: train and evaluate under autocast
    "deit_lt": ("fp16", "fp16"),  # engine.py: train_one_epoch and evaluate under autocast
    "crt": ("fp32", "fp32"),  # classifier-balancing run_networks.py: no autocast
    "tau_norm": ("fp32", "fp32"),
    "lws": ("fp32", "fp32"),
    "bal_softmax": ("fp32", "fp32"),  # BalancedMetaSoftmax-Classification run_networks.py: no autocast
    "cb": ("fp32", "fp32"),  # class-balanced-loss src/cifar_main.py: float32 TensorFlow
    "focal": ("fp32", "fp32"),  # the same code's focal baseline
    "paco": ("fp32", "fp32"),  # paco_cifar.py has no autocast; paco_lt.py's needs --fp16 (Places-LT only)
}


@pytest.mark.parametrize("method", sorted(OFFICIAL))
def test_paper_presets_use_the_official_codes_precision(method):
    presets = [name for name in METHODS.get(method).presets if name.startswith("paper")]
    assert presets
    for preset in presets:
        for dataset in METHODS.get(method).presets[preset]:
            cfg = resolve_config(method, dataset, preset)
            evaluate = cfg.train.precision if cfg.eval.precision == "train" else cfg.eval.precision
            assert (cfg.train.precision, evaluate) == OFFICIAL[method], (preset, dataset)


def test_every_paper_preset_names_its_precision():
    for method in METHODS.names():
        for preset, table in METHODS.get(method).presets.items():
            if preset.startswith("paper"):
                for dataset, recipe in table.items():
                    precision = recipe.get("train", {}).get("precision")
                    assert precision in ("fp32", "fp16", "bf16"), (method, preset, dataset)


def check_every_trainable_parameter_gets_a_gradient(trainer) -> None:
    """An ``on_trainer`` hook: after each stage's first backward, every trainable parameter has a
    gradient, as DDP with ``find_unused_parameters=False`` (the default) requires."""
    original, checked = trainer._forward_backward, set()

    def forward_backward(model, batch, ctx, accum, where):
        terms = original(model, batch, ctx, accum, where)
        if ctx.stage not in checked and not trainer.method.find_unused_parameters:
            checked.add(ctx.stage)
            unused = [n for n, p in trainer.method.named_parameters() if p.requires_grad and p.grad is None]
            assert not unused, f"stage {ctx.stage}: trainable parameters without a gradient: {unused}"
        return terms

    trainer._forward_backward = forward_backward


@pytest.mark.slow
@pytest.mark.parametrize("method", shipped_methods())
def test_every_methods_smoke_preset_trains_with_bf16_autocast_on_the_cpu(method, tmp_path):
    from ltbench.runner import train

    cfg = resolve_config(method, "synthetic_lt", "smoke", [*SMALL_SYNTHETIC, "train.precision=bf16"])
    record = train(cfg, tmp_path, progress=False, on_trainer=check_every_trainable_parameter_gets_a_gradient).record
    assert record["precision"]["train"] == record["precision"]["eval"] == "bf16"
    assert {"matmul_allow_tf32", "cudnn_allow_tf32"} <= record["precision"].keys()
    main = record["splits"]["test"]["heads"]["main"]
    assert sum(main["total"]) > 0 and 0 <= sum(main["correct"]) <= sum(main["total"])
