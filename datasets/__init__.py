"""Registered datasets (imported as ``ltbench.datasets``); importing a module registers it."""

from . import cifar_lt, fmnist_lt, folder_lt, imagenet_lt, inat2018, synthetic_lt  # noqa: F401
