"""Registered methods (imported as ``ltbench.methods``); importing a module registers it."""
from . import ce  # noqa: F401
