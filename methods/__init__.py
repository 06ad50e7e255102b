"""Registered methods (imported as ``ltbench.methods``); importing a module registers it."""

from . import (
    bal_softmax,  # noqa: F401
    cb,  # noqa: F401
    ce,  # noqa: F401
    crt,  # noqa: F401
    deit_lt,  # noqa: F401
    focal,  # noqa: F401
    la,  # noqa: F401
    ldam_drw,  # noqa: F401
    livt,  # noqa: F401
    lws,  # noqa: F401
    mdcs,  # noqa: F401
    paco,  # noqa: F401
    ride,  # noqa: F401
    shike,  # noqa: F401
    tau_norm,  # noqa: F401
)
