"""Per-channel normalisation statistics of the paper presets: the iNaturalist 2018 statistics of
the official iNat loaders (RIDE, MDCS ``inaturalist_data_loaders.py``; Saddle-LongTail
``datasets/ina2018.py``, whose LDAM-DRW+SAM network is DeiT-LT's teacher) come from one definition."""

from __future__ import annotations

import pytest

from ltbench.config import resolve_config
from ltbench.filelists import INAT_MEAN, INAT_STD
from ltbench.methods.deit_lt import DeiTLT

# transforms.Normalize([0.466, 0.471, 0.380], [0.195, 0.194, 0.192]) in the official loaders
OFFICIAL_INAT = ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def stats(cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(cfg.data.mean), tuple(cfg.data.std)


def test_one_definition_of_the_inat_statistics():
    assert (INAT_MEAN, INAT_STD) == OFFICIAL_INAT


@pytest.mark.parametrize(
    "method, preset",
    [("mdcs", "paper"), ("mdcs", "paper_short"), ("ldam_drw", "paper_sam"), ("ride", "paper"), ("livt", "paper")],
)
def test_inat_presets_of_official_inat_loaders_use_the_inat_statistics(method, preset):
    assert stats(resolve_config(method, "inat2018", preset)) == OFFICIAL_INAT


def test_the_deit_lt_teacher_on_inat_is_trained_with_the_inat_statistics_the_student_with_imagenets():
    student = resolve_config("deit_lt", "inat2018", "paper")
    teacher = DeiTLT.requires(student)["teacher"]
    assert stats(teacher) == OFFICIAL_INAT  # Saddle-LongTail datasets/ina2018.py
    assert stats(student) == IMAGENET  # DeiT-LT datasets.py: ImageNet's for every dataset


@pytest.mark.parametrize("method, preset", [("ldam_drw", "paper_sam"), ("mdcs", "paper")])
def test_imagenet_lt_presets_keep_the_imagenet_statistics(method, preset):
    assert stats(resolve_config(method, "imagenet_lt", preset)) == IMAGENET
