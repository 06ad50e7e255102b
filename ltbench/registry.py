"""Name -> object registries, in the style of timm's ``register_model`` / ``create_model``.

One decorator files a thing under a name; ``Registry.get`` looks it up and fails with the list of
valid names. Methods, datasets, backbones, schedules, optimizers, samplers and augmentation recipes
all use the same class, so plugins register the same way the built-ins do.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories or classes of one kind (e.g. ``method``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` files the decorated object under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            try:
                obj.registered_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self, name: str) -> str:
        """First line of the registered object's docstring: the one-line description."""
        doc = getattr(self.get(name), "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


METHODS: Registry = Registry("method")
DATASETS: Registry = Registry("dataset")
MODELS: Registry = Registry("model")

register_method = METHODS.register
register_dataset = DATASETS.register
register_model = MODELS.register


_plugins_loaded = False


def load_plugins() -> None:
    """Import the built-in methods and datasets, then any installed ``ltbench.plugins`` entry points.

    Registration happens at import time, so everything that looks names up calls this first. The
    entry points are scanned once per process (the scan of installed packages takes tens of
    milliseconds, and the report resolves many configurations).
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    import importlib
    from importlib.metadata import entry_points

    importlib.import_module("ltbench.datasets")
    importlib.import_module("ltbench.methods")
    for ep in entry_points(group="ltbench.plugins"):
        ep.load()
    _plugins_loaded = True
