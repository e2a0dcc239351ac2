"""LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685): a low-rank update beside chosen linear projections.

``Lora`` at one projection ``h = W x + b`` (``nn.Linear``, GPT-2's ``Conv1D`` or a 1x1 ``nn.Conv1d``), hooked in
the slot's ``parallel`` mode (the slot passes the projection's own input ``x`` and its output ``h``)::

    x ──┬── W x + b ─────────────────────────────┐
        └── drop ── A (in→r) ── B (r→out) ── ×α/r ─(+)─> h'

``B`` starts at zero, so a new adapter is an exact identity. ``merge_adapter`` folds ``(α/r)·B A`` into ``W``
(``methods.merge``). Where it goes: ``targets`` picks projection kinds found by structure
(``core.placement.block_projections``): ``"qv"`` (the paper's default: query and value; a fused qkv projection,
as in GPT-2, is adapted whole), ``"attention"`` (every attention projection), ``"ffn"`` or ``"all"``;
``target_modules`` names modules explicitly instead. Pure torch: no Transformers imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ..core.config import MethodConfig
from ..core.contract import Method
from .merge import MergeableAdapter, from_matrix, to_matrix

if TYPE_CHECKING:
    from ..core.placement import Target

__all__ = ["LORA_TARGETS", "METHOD", "Lora", "LoraConfig"]

_ATTENTION = ("query", "key", "value", "qkv", "attention_output")
_FFN = ("ffn_input", "ffn_output")
# ``LoraConfig.targets`` -> the projection kinds it adapts (all in the slot's parallel mode)
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "qv": ("query", "value", "qkv"),
    "attention": _ATTENTION,
    "ffn": _FFN,
    "all": _ATTENTION + _FFN,
}


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    """LoRA: ``h = W x + (alpha / rank) · B A x`` on chosen projections (``placement`` is not used).

    Attributes:
        rank: r, the inner size of ``B A``.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the input of ``A`` (training only).
        targets: which projections, found by structure in every selected block: ``"qv"``, ``"attention"``,
            ``"ffn"`` or ``"all"`` (``LORA_TARGETS``); ``target_modules`` overrides it.
    """

    method: ClassVar[str] = "lora"

    rank: int = field(default=8, metadata={"help": "rank r of the update B A"})
    alpha: float = field(default=8.0, metadata={"help": "the update is scaled by alpha / rank"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the input of A while training"})
    targets: str = field(
        default="qv", metadata={"help": "projections found by structure", "choices": tuple(LORA_TARGETS)}
    )

    def _validate(self) -> None:
        super()._validate()
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise self._bad("rank", "an integer >= 1")
        if not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise self._bad("alpha", "a number > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise self._bad("dropout", "a probability in [0, 1)")
        if self.targets not in LORA_TARGETS:
            raise self._bad("targets", f"one of {tuple(LORA_TARGETS)}")

    @property
    def scaling(self) -> float:
        """``alpha / rank``, the factor on ``B A x``."""
        return float(self.alpha) / self.rank

    def projections(self) -> dict[str, str]:
        return dict.fromkeys(LORA_TARGETS[self.targets], "parallel")

    def explicit_mode(self, module: str) -> str:
        return "parallel"  # LoRA always reads the projection's own input


class Lora(MergeableAdapter):
    """The LoRA update at one projection reading ``in_width`` and writing ``out_width`` features.

    Parameters ``A`` (r, in) and ``B`` (out, r), the shapes of peft's ``lora_A.weight`` / ``lora_B.weight``.
    """

    method = "lora"

    def __init__(self, target: Target, config: LoraConfig) -> None:
        super().__init__()
        self.config = config
        self.mode = target.mode
        self.in_width = target.in_width
        self.out_width = target.out_width
        self.scaling = config.scaling  # a constant of the config: a float, not a tensor
        self.A = nn.Parameter(torch.empty(config.rank, target.in_width))
        self.B = nn.Parameter(torch.zeros(target.out_width, config.rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear (and peft) initialise A
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, delta_only: bool = False) -> torch.Tensor:
        """``residual + (alpha/r)·B A drop(x)`` (x: (..., in), residual: (..., out)) in the residual's dtype."""
        base = x if residual is None else residual
        if self.merged:  # the update already lives in the host's weight
            return torch.zeros_like(base) if delta_only else base
        # Under autocast the matmuls run in its dtype anyway; outside it, compute in the adapter's dtype.
        z = x if torch.is_autocast_enabled(x.device.type) else x.to(self.A.dtype)
        if self.drop is not None:
            z = self.drop(z)
        delta = (F.linear(F.linear(z, self.A), self.B) * self.scaling).to(base.dtype)  # (..., r) -> (..., out)
        return delta if delta_only else base + delta

    def merged_params(self, host: nn.Module) -> dict[str, torch.Tensor]:
        update = (self.B.float() @ self.A.float()) * self.scaling  # (out, in)
        return {"weight": from_matrix(host, to_matrix(host) + update)}

    def extra_repr(self) -> str:
        return f"{self.in_width}->{self.out_width}, rank={self.config.rank}, scaling={self.scaling:g}"


def build(target: Target, config: LoraConfig) -> Lora:
    """The LoRA update ``config`` puts at ``target`` (a projection, parallel mode)."""
    return Lora(target, config)


METHOD = Method("lora", LoraConfig, build, modes=("parallel",))
