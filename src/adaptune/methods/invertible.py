"""Invertible adapters (MAD-X, Pfeiffer et al. 2020, https://arxiv.org/abs/2005.00052): an invertible NICE coupling
block (Dinh et al. 2014) on the input embeddings, and its exact inverse on what the output embeddings read.

With ``x = [x1 | x2]`` split at ``d // 2`` and two small MLPs ``F`` (x2 -> x1 width), ``G`` (y1 -> x2 width)::

    forward (embeddings):       y1 = x1 + F(x2)         y2 = x2 + G(y1)
    inverse (output emb. in):   x2 = y2 - G(y1)         x1 = y1 - F(x2)

``F`` and ``G`` are ``Linear(in -> in / reduction_factor) -> act -> Linear(-> out)`` and their last layer starts
at zero, so a new adapter is an exact identity. The inverse module reads the forward module's ``F`` and ``G``
(``share``): one copy in state_dict and saved files. Placement is ``core.placement.embedding_targets`` (the
inverse sits on the vocabulary projection's input, after any LM-head transform, as in AdapterHub): a
classification or token-classification model has no LM head, so only the forward half runs there (as in MAD-X,
where the task adapter sits on top of the language adapter and its invertible block).

Use it inside a language adapter: ``MixConfig.madx()`` = a pfeiffer bottleneck + this, one named adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..core.config import MethodConfig
from ..core.contract import AdapterModule, Method
from .bottleneck import ACTIVATIONS, make_activation

if TYPE_CHECKING:
    from ..core.placement import Target

__all__ = ["METHOD", "InvertibleAdapter", "InvertibleConfig"]


@dataclass(frozen=True)
class InvertibleConfig(MethodConfig):
    """A NICE coupling block on the embeddings and its inverse before the LM head (``placement`` is not used).

    Attributes:
        reduction_factor: the inner width of ``F`` and ``G`` is their input width divided by this (MAD-X: 2).
        activation: the non-linearity inside ``F`` and ``G``.
    """

    method: ClassVar[str] = "invertible"
    at_embeddings: ClassVar[bool] = True

    reduction_factor: float = field(default=2.0, metadata={"help": "inner width of F and G = input width / this"})
    activation: str = field(default="relu", metadata={"help": "non-linearity in F and G", "choices": ACTIVATIONS})

    def _validate(self) -> None:
        super()._validate()
        if not (isinstance(self.reduction_factor, (int, float)) and self.reduction_factor > 0):
            raise self._bad("reduction_factor", "a number > 0")
        if self.activation not in ACTIVATIONS:
            raise self._bad("activation", f"one of {ACTIVATIONS}")


def _subnet(width_in: int, width_out: int, config: InvertibleConfig) -> nn.Sequential:
    inner = max(1, int(width_in // config.reduction_factor))
    net = nn.Sequential(nn.Linear(width_in, inner), make_activation(config.activation), nn.Linear(inner, width_out))
    nn.init.zeros_(net[2].weight)  # F = G = 0 at init: the coupling is the identity
    nn.init.zeros_(net[2].bias)
    return net


class InvertibleAdapter(AdapterModule):
    """The coupling at one place: ``inverse`` False at the embeddings (output mode), True before the output
    embeddings (input mode, reading the forward module's ``F`` / ``G``)."""

    method = "invertible"

    def __init__(self, target: Target, config: InvertibleConfig) -> None:
        super().__init__()
        self.config = config
        self.mode = target.mode
        self.out_width = target.out_width
        self.inverse = target.mode == "input"
        self.split = target.out_width // 2
        rest = target.out_width - self.split
        self.F: nn.Module | None = _subnet(rest, self.split, config)
        self.G: nn.Module | None = _subnet(self.split, rest, config)
        self._owner: tuple[InvertibleAdapter, ...] = ()  # set by ``share`` on the inverse module

    def nets(self) -> tuple[nn.Module, nn.Module]:
        """``(F, G)``: this module's own, or the forward module's for the inverse."""
        src = self._owner[0] if self._owner else self
        assert src.F is not None and src.G is not None
        return src.F, src.G

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, delta_only: bool = False) -> torch.Tensor:
        f, g = self.nets()
        dtype = next(f.parameters()).dtype
        z = x if torch.is_autocast_enabled(x.device.type) else x.to(dtype)
        a, b = z[..., : self.split], z[..., self.split :]
        if self.inverse:
            b = b - g(a)
            a = a - f(b)
        else:
            a = a + f(b)
            b = b + g(a)
        out = torch.cat((a, b), dim=-1).to(x.dtype)
        return out - x if delta_only else out

    def extra_repr(self) -> str:
        return f"width={self.out_width}, split={self.split}, inverse={self.inverse}"


def build(target: Target, config: InvertibleConfig) -> InvertibleAdapter:
    """The coupling at the embeddings (output mode) or its inverse at the LM head's input (input mode)."""
    return InvertibleAdapter(target, config)


def share(modules: list[AdapterModule]) -> None:
    """The inverse reads the forward coupling's ``F`` and ``G`` (one copy in state_dict and in saved files)."""
    forward = next((m for m in modules if isinstance(m, InvertibleAdapter) and not m.inverse), None)
    for module in modules:
        assert isinstance(module, InvertibleAdapter)
        if module.inverse and forward is not None:
            del module.F, module.G  # unregisters them
            module.F = module.G = None
            module._owner = (forward,)


METHOD = Method("invertible", InvertibleConfig, build, modes=("output", "input"), share=share)
