"""The written contract between the core and adapter methods, and the registry that joins them.

The core (slot, composition, model API) never names a method. It sees two kinds of module:

- ``AdapterModule``: one method's adapter at one place. The slot calls ``forward(x, residual, delta_only)``
  and reads ``mode`` to know which input to pass; ``config`` says where the adapter goes.
- ``MixerModule``: a layer that combines several adapters' deltas at one place (AdapterFusion).

A method registers a ``Method`` (its name, its config class and how to build its module for a target), so
``add_adapter`` builds whatever the config asks for and a new method touches only its own file and one
registry line (``adaptune/methods/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from .placement import Target

__all__ = ["METHODS", "AdapterModule", "Method", "MixerModule", "build_adapter", "method_for", "register_method"]


class AdapterModule(nn.Module):
    """Base class of every adapter method's per-place module.

    Subclasses set ``method`` (the registry name) and, in ``__init__``, ``config`` and ``mode``
    (``"output"``: adapt the host's output; ``"parallel"``: read the sublayer input, add to its output;
    ``"post_ln"``: the host is a closing LayerNorm, adapt ``LN(v)`` and re-normalise ``v + delta``).
    """

    method: ClassVar[str] = ""
    config: Any
    mode: str

    def forward(  # pragma: no cover - the contract; subclasses implement it
        self, x: torch.Tensor, residual: torch.Tensor | None = None, delta_only: bool = False
    ) -> torch.Tensor:
        """``residual + delta(x)`` (``residual`` defaults to ``x``), in the residual's dtype; with ``delta_only``
        the delta alone (what fusion attends over)."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        """Parameters this module adds to the model."""
        return sum(p.numel() for p in self.parameters())


class MixerModule(nn.Module):
    """Base class of layers that combine several adapters at one place (AdapterFusion).

    ``forward(query, deltas, residual)`` takes the query (..., d), the adapters' deltas (..., n, d) and the
    residual to add to, and returns ``(output (..., d), weights (..., n))``.
    """

    def forward(  # pragma: no cover - the contract
        self, query: torch.Tensor, deltas: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class Method:
    """A registered adapter method: its name, config class and module builder."""

    name: str
    config_class: type
    build: Callable[[Target, Any], AdapterModule]  # (target, config) -> the module for that place


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make a method known to the core (called once per method, at import of ``adaptune.methods``)."""
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"adapter method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def method_for(config: Any) -> Method:
    """The registered method whose config class ``config`` is an instance of."""
    for method in METHODS.values():
        if isinstance(config, method.config_class):
            return method
    raise TypeError(
        f"{type(config).__name__} is not the config of a registered adapter method ({', '.join(METHODS) or 'none'})"
    )


def build_adapter(target: Target, config: Any) -> AdapterModule:
    """The adapter module ``config`` puts at ``target``."""
    return method_for(config).build(target, config)
