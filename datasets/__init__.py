"""Registered datasets (imported as ``ltbench.datasets``); importing a module registers it."""
from . import fmnist_lt, synthetic_lt  # noqa: F401
