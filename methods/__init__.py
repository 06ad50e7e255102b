"""Registered methods (imported as ``ltbench.methods``); importing a module registers it."""

from . import (
    ce,  # noqa: F401
    livt,  # noqa: F401
    ride,  # noqa: F401
    shike,  # noqa: F401
)
