"""Registered methods (imported as ``ltbench.methods``); importing a module registers it."""
from . import ce  # noqa: F401
from . import ride  # noqa: F401
from . import livt  # noqa: F401
