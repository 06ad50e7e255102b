"""Registered methods (imported as ``ltbench.methods``); importing a module registers it."""

from . import (
    ce,  # noqa: F401
    deit_lt,  # noqa: F401
    la,  # noqa: F401
    ldam_drw,  # noqa: F401
    livt,  # noqa: F401
    mdcs,  # noqa: F401
    ride,  # noqa: F401
    shike,  # noqa: F401
)
