"""Name -> object registries, in the style of timm's ``register_model`` / ``create_model``.

One decorator files a thing under a name; ``Registry.get`` looks it up and fails with the list of
valid names. Methods, datasets, backbones, schedules, optimizers, samplers and augmentation recipes
all use the same class, so plugins register the same way the built-ins do.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from pathlib import Path
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


# ----------------------------------------------------------------------------- listing without importing

_DECORATORS = {"method": "register_method", "dataset": "register_dataset"}
_PACKAGES = {"method": "ltbench.methods", "dataset": "ltbench.datasets"}


def builtin_index(kind: str) -> list[tuple[str, str, list[str]]] | None:
    """``(name, description, preset names)`` of the built-in methods or datasets, read from their
    source (``ast``) instead of importing it, so that ``ltbench list`` needs no torch. None when a
    module does not declare them literally (then the caller imports them)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(_PACKAGES[kind])
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    init = ast.parse((folder / "__init__.py").read_text())
    modules = [a.name for node in init.body if isinstance(node, ast.ImportFrom) and node.level == 1 for a in node.names]
    found = []
    for module in modules:
        tree = ast.parse((folder / f"{module}.py").read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for deco in cls.decorator_list:
                if not (
                    isinstance(deco, ast.Call)
                    and getattr(deco.func, "id", None) == _DECORATORS[kind]
                    and deco.args
                    and isinstance(deco.args[0], ast.Constant)
                ):
                    continue
                doc = (ast.get_docstring(cls) or "").strip()
                presets = _literal_presets(cls, tree) if kind == "method" else []
                if presets is None:
                    return None
                found.append((deco.args[0].value, doc.splitlines()[0] if doc else "", presets))
    return sorted(found)


def _literal_presets(cls, module) -> list[str] | None:
    """Keys of the literal ``presets`` dict, given in the class body or after it, at module level,
    as ``Cls.presets = {...}`` (a method module may put its recipe tables after its class)."""
    import ast

    def assigns(nodes, match):
        for node in nodes:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(match(t) for t in targets):
                return node
        return None

    node = assigns(cls.body, lambda t: getattr(t, "id", None) == "presets") or assigns(
        module.body,
        lambda t: isinstance(t, ast.Attribute) and t.attr == "presets" and getattr(t.value, "id", None) == cls.name,
    )
    if node is not None:
        if isinstance(node.value, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.value.keys):
            return sorted(k.value for k in node.value.keys)
        return None
    bases = [getattr(b, "id", None) for b in cls.bases]
    return [] if bases == ["Method"] else None  # inherited from another method: import it
