"""(IA)³ (Liu et al. 2022, https://arxiv.org/abs/2205.05638): learned rescaling of keys, values and the FFN
intermediate activation.

``IA3`` at one projection holds a vector ``l`` (ones at first: a new adapter is an exact identity)::

    keys / values (slot mode "output"):     k = l ⊙ (W_k x + b)      on the key / value projections' outputs
    FFN intermediate (slot mode "input"):   y = W_out (l ⊙ a) + b     on the input of the FFN output projection

A fused qkv projection (GPT-2's ``c_attn``) is scaled whole, queries included, as peft does. Both forms are linear
in the host's parameters, so ``merge_adapter`` folds them in (rows of ``W`` and ``b`` for outputs, columns of
``W`` for inputs). Pure torch: no Transformers imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ..core.config import MethodConfig
from ..core.contract import Method
from ..core.placement import matches_pattern
from .merge import MergeableAdapter, from_matrix, to_matrix

if TYPE_CHECKING:
    from ..core.placement import Target

__all__ = ["IA3", "IA3_TARGETS", "METHOD", "IA3Config"]

# ``IA3Config.targets`` -> projection kind -> slot mode
IA3_TARGETS: dict[str, dict[str, str]] = {
    "kv_ffn": {"key": "output", "value": "output", "qkv": "output", "ffn_output": "input"},
    "kv": {"key": "output", "value": "output", "qkv": "output"},
    "ffn": {"ffn_output": "input"},
}


@dataclass(frozen=True)
class IA3Config(MethodConfig):
    """(IA)³: learned vectors rescaling keys, values and the FFN intermediate activation (``placement`` unused).

    Attributes:
        targets: ``"kv_ffn"`` (the paper), ``"kv"`` or ``"ffn"`` (``IA3_TARGETS``), found by structure in every
            selected block; ``target_modules`` overrides it.
        feedforward_modules: with ``target_modules``: the matched modules whose *input* is scaled (FFN output
            projections); every other matched module has its output scaled.
    """

    method: ClassVar[str] = "ia3"

    targets: str = field(
        default="kv_ffn", metadata={"help": "what to rescale, found by structure", "choices": tuple(IA3_TARGETS)}
    )
    feedforward_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        value = self.feedforward_modules
        if isinstance(value, (list, str)):  # JSON lists and a single pattern, as target_modules
            object.__setattr__(self, "feedforward_modules", (value,) if isinstance(value, str) else tuple(value))
        super().__post_init__()

    def _validate(self) -> None:
        super()._validate()
        if self.targets not in IA3_TARGETS:
            raise self._bad("targets", f"one of {tuple(IA3_TARGETS)}")
        if self.feedforward_modules is not None and not all(isinstance(p, str) for p in self.feedforward_modules):
            raise self._bad("feedforward_modules", "a list of module-name patterns")

    def projections(self) -> dict[str, str]:
        return dict(IA3_TARGETS[self.targets])

    def explicit_mode(self, module: str) -> str:
        feedforward = any(matches_pattern(module, p) for p in self.feedforward_modules or ())
        return "input" if feedforward else "output"


class IA3(MergeableAdapter):
    """The (IA)³ vector at one projection: scales its output (keys, values) or its input (FFN output)."""

    method = "ia3"

    def __init__(self, target: Target, config: IA3Config) -> None:
        super().__init__()
        self.config = config
        self.mode = target.mode
        self.out_width = target.out_width
        self.vector = nn.Parameter(torch.ones(target.out_width))  # (d,): out-features, or in-features for "input"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, delta_only: bool = False) -> torch.Tensor:
        """``l ⊙ x`` in ``x``'s dtype (x: (..., d)); with a separate ``residual``, ``residual + (l ⊙ x - x)``."""
        if self.merged:  # the scaling already lives in the host's weights
            return torch.zeros_like(x) if delta_only else (x if residual is None else residual)
        z = x if torch.is_autocast_enabled(x.device.type) else x.to(self.vector.dtype)
        scaled = (z * self.vector).to(x.dtype)
        if delta_only:
            return (scaled - x).to(x.dtype if residual is None else residual.dtype)
        if residual is None or residual is x:  # the slot's output / input modes: plain rescaling, as peft computes it
            return scaled
        return residual + (scaled - x).to(residual.dtype)

    def merged_params(self, host: nn.Module) -> dict[str, torch.Tensor]:
        w, vec = to_matrix(host), self.vector.float()  # (out, in), (d,)
        if self.mode == "input":  # W (l ⊙ a) = (W diag(l)) a; the bias is untouched
            return {"weight": from_matrix(host, w * vec[None, :])}
        params = {"weight": from_matrix(host, w * vec[:, None])}  # l ⊙ (W x + b) = (diag(l) W) x + l ⊙ b
        if getattr(host, "bias", None) is not None:
            params["bias"] = (host.bias.float() * vec).to(host.bias.dtype)
        return params

    def extra_repr(self) -> str:
        return f"width={self.out_width}, mode={self.mode}"


def build(target: Target, config: IA3Config) -> IA3:
    """The (IA)³ vector ``config`` puts at ``target`` (output or input mode)."""
    return IA3(target, config)


METHOD = Method("ia3", IA3Config, build, modes=("output", "input"))
