"""ltbench: train the leading long-tailed recognition methods from scratch on one code path."""

__version__ = "0.1.0"

from .config import Config, resolve_config  # noqa: E402
from .registry import register_dataset, register_method, register_model  # noqa: E402

__all__ = ["Config", "resolve_config", "register_dataset", "register_method", "register_model", "__version__"]
