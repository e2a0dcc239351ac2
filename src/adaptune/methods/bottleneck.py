"""Pure-torch adapter modules (no Transformers imports).

``Bottleneck`` is the adapter of Houlsby et al. (2019, https://arxiv.org/abs/1902.00751)::

    h ──┬─────────────────────────────────────────────────────────┐
        └─ [LN] ─ down (d→r) ─ act ─ drop ─ up (r→d) ─ ×s ─ [×gate] ─ [LN] ─(+)─> h'

It owns its residual: ``forward(x)`` returns ``x + s·f(x)``; for a parallel placement the caller passes
the residual to add to, ``forward(x, residual=ffn(x))`` returns ``ffn(x) + s·f(x)``. The branch runs in the
adapter's own dtype and the result is cast back to the residual's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.config import AdapterConfig
from ..core.contract import AdapterModule, Method

__all__ = ["Bottleneck", "make_activation"]


def make_activation(name: str) -> nn.Module:
    """The activation module for an ``AdapterConfig.activation`` name."""
    table = {
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "gelu_new": lambda: nn.GELU(approximate="tanh"),
        "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "tanh": nn.Tanh,
        "identity": nn.Identity,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
    return table[name]()


class Bottleneck(AdapterModule):
    """A bottleneck adapter for hidden states of width ``width``.

    Args:
        width: the host's hidden size at this position (d).
        config: size, activation, dropout, scaling, init and layer norms.
        mode: ``"output"`` (``h + s·f(h)``) or ``"parallel"`` (``residual + s·f(x)``); read by the hook.
    """

    method = "bottleneck"

    def __init__(self, width: int, config: AdapterConfig, mode: str = "output") -> None:
        super().__init__()
        self.config = config
        self.mode = mode
        self.width = width
        self.size = config.hidden_size_for(width)
        self.norm_before = nn.LayerNorm(width) if config.layer_norm_before else None
        self.down = nn.Linear(width, self.size)
        self.act = make_activation(config.activation)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else None
        self.up = nn.Linear(self.size, width)
        self.norm_after = nn.LayerNorm(width) if config.layer_norm_after else None
        self.gate = nn.Linear(width, 1) if config.gate else None
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)  # sigmoid(0) = 0.5 for every token until trained
            nn.init.zeros_(self.gate.bias)
        if config.learn_scaling:
            self.scale = nn.Parameter(torch.tensor(float(config.scaling)))
        else:
            # A buffer (not a Python float) so the value travels with .to() and the saved weights.
            self.register_buffer("scale", torch.tensor(float(config.scaling)), persistent=True)
        self.reset_parameters(config.init, config.init_std)

    def reset_parameters(self, init: str = "identity", std: float = 1e-2) -> None:
        """Initialise the projections; ``"identity"`` zeroes the up-projection so the adapter is a no-op."""
        with torch.no_grad():
            if init == "identity":
                nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
                nn.init.zeros_(self.down.bias)
                nn.init.zeros_(self.up.weight)
                nn.init.zeros_(self.up.bias)
            elif init in ("normal", "bert"):
                s = 0.02 if init == "bert" else std
                for lin in (self.down, self.up):
                    nn.init.normal_(lin.weight, std=s)
                    nn.init.zeros_(lin.bias)
            else:
                raise ValueError(f"unknown init {init!r}")

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """``s·f(x)`` in the adapter's dtype: (..., d) -> (..., d)."""
        x = x.to(self.down.weight.dtype)
        z = self.norm_before(x) if self.norm_before is not None else x
        z = self.act(self.down(z))  # (..., r)
        if self.drop is not None:
            z = self.drop(z)
        z = self.up(z) * self.scale  # (..., d)
        if self.gate is not None:
            z = z * torch.sigmoid(self.gate(x))  # (..., 1): how much of this adapter each token takes
        if self.norm_after is not None:
            z = self.norm_after(z)
        return z

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, delta_only: bool = False) -> torch.Tensor:
        """``residual + s·f(x)`` with ``residual`` defaulting to ``x``, in the residual's dtype.

        With ``delta_only`` it returns ``s·f(x)`` alone (fusion attends over adapter deltas).
        """
        base = x if residual is None else residual
        if not delta_only and self._plain() and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # Inference fast path: the scale goes into the residual add (one pass over (..., d), not two). Not when
            # compiling: inductor fuses the two passes itself, and float(scale) would break the graph.
            z = self.act(self.down(x.to(self.down.weight.dtype)))
            return base.add(self.up(z).to(base.dtype), alpha=float(self.scale))
        delta = self.branch(x).to(base.dtype)
        return delta if delta_only else base + delta

    def _plain(self) -> bool:
        """down → act → up → scale, nothing else (no norms, gate, or dropout in effect)."""
        return (
            self.norm_before is None
            and self.norm_after is None
            and self.gate is None
            and (self.drop is None or not self.training)
        )

    def extra_repr(self) -> str:
        return f"width={self.width}, size={self.size}, mode={self.mode}"


METHOD = Method("bottleneck", AdapterConfig, lambda target, config: Bottleneck(target.width, config, target.mode))
