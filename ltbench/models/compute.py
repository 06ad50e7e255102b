"""Multiply-accumulate (MAC) counts of the layers that actually ran, from forward hooks.

Counting at run time rather than from the architecture is what makes the figure honest for
methods that skip work per sample (RIDE's router sends only some images to later experts): each
hook sees the real batch a layer processed, so the total over an evaluation pass divided by the
number of images is the average compute per image.

By default only the layers that dominate a CNN's cost are counted: convolutions, linear layers and
the cosine classifier (its normalisations are ignored). BatchNorm, activations and pooling are not
MACs and are left out; ``rules`` accepts other conventions (e.g. thop's, in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from .heads import NormedLinear

MacRule = Callable[[nn.Module, tuple, Tensor], int]


def conv_macs(module: nn.Conv2d, inputs: tuple, output: Tensor) -> int:
    """Every output element costs (in_channels / groups) * kernel area MACs (bias ignored)."""
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def linear_macs(module: nn.Module, inputs: tuple, output: Tensor) -> int:
    """Every output element costs in_features MACs (bias ignored); also the cosine classifier's
    matrix product, whose input and weight normalisations are negligible."""
    return output.numel() * inputs[0].shape[-1]


DEFAULT_RULES: dict[type, MacRule] = {nn.Conv2d: conv_macs, nn.Linear: linear_macs, NormedLinear: linear_macs}


class MacCounter:
    """Context manager: while active, adds up the MACs of every counted layer under ``model``.

    >>> with MacCounter(net) as counter:
    ...     net(x)
    >>> counter.macs  # for the whole batch
    """

    def __init__(self, model: nn.Module, rules: dict[type, MacRule] | None = None) -> None:
        self.model = model
        self.rules = DEFAULT_RULES if rules is None else rules
        self.macs = 0
        self._handles: list = []

    def _rule(self, module: nn.Module) -> MacRule | None:
        for cls in type(module).__mro__:  # the most specific registered class wins
            if cls in self.rules:
                return self.rules[cls]
        return None

    def __enter__(self) -> MacCounter:
        for module in self.model.modules():
            rule = self._rule(module)
            if rule is not None:
                self._handles.append(module.register_forward_hook(self._hook(rule)))
        return self

    def _hook(self, rule: MacRule):
        def add(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self.macs += int(rule(module, inputs, output))

        return add

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def count_macs(model: nn.Module, forward: Callable[[], object], rules: dict[type, MacRule] | None = None) -> int:
    """MACs of the layers of ``model`` that run during ``forward()`` (e.g. ``lambda: net(x)``)."""
    with MacCounter(model, rules) as counter:
        forward()
    return counter.macs
