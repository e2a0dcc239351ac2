"""The bottleneck adapter (Houlsby et al. 2019, https://arxiv.org/abs/1902.00751): its config and module.

``Bottleneck`` at one place::

    h ──┬─────────────────────────────────────────────────────────┐
        └─ [LN] ─ down (d→r) ─ act ─ drop ─ up (r→d) ─ ×s ─ [×gate] ─ [LN] ─(+)─> h'

It owns its residual: ``forward(x)`` returns ``x + s·f(x)``; for a parallel placement the caller passes
the residual to add to, ``forward(x, residual=ffn(x))`` returns ``ffn(x) + s·f(x)`` (``down`` reads the input
width, ``up`` writes the output width, so a parallel adapter beside a non-square projection works). The branch
runs in the adapter's own dtype and the result is cast back to the residual's dtype. Pure torch: no
Transformers imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import MethodConfig
from ..core.contract import AdapterModule, Method

if TYPE_CHECKING:
    from ..core.placement import Target

__all__ = ["ACTIVATIONS", "INITS", "METHOD", "AdapterConfig", "Bottleneck", "make_activation"]

ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "gelu_new", "gelu_tanh", "silu", "swish", "tanh", "identity")
INITS: tuple[str, ...] = ("identity", "normal", "bert")


@dataclass(frozen=True)
class AdapterConfig(MethodConfig):
    """A bottleneck adapter: ``h' = h + s * up(act(down(h)))``, and where it is inserted.

    Where it goes (``placement``, ``layers``, ``target_modules``) is documented on ``MethodConfig``. Post-LN
    placements compute ``LN(v + s * f(LN(v)))`` with ``v = x + h``.

    Attributes:
        reduction_factor: bottleneck size = model width // reduction_factor (ignored if ``bottleneck_size``).
        bottleneck_size: explicit bottleneck size; overrides ``reduction_factor``.
        activation: one of ``ACTIVATIONS``.
        dropout: dropout on the bottleneck activations (training only).
        scaling: the factor ``s`` on the adapter branch.
        learn_scaling: make ``s`` a trainable scalar initialised at ``scaling``.
        init: ``"identity"`` (zero up-projection: a new adapter changes nothing), ``"normal"`` (both
            projections ~ N(0, init_std)), ``"bert"`` (both ~ N(0, 0.02)).
        init_std: the standard deviation for ``init="normal"``.
        layer_norm_before: LayerNorm on the adapter input (inside the branch).
        layer_norm_after: LayerNorm on the branch output, before scaling.
        gate: a learned input-dependent gate per token, ``h + sigmoid(w·h + b) * s * f(h)`` (dynamic adapter);
            starts at 0.5.
    """

    method: ClassVar[str] = "bottleneck"

    reduction_factor: float = 16
    bottleneck_size: int | None = None
    activation: str = "relu"
    dropout: float = 0.0
    scaling: float = 1.0
    learn_scaling: bool = False
    init: str = "identity"
    init_std: float = 1e-2
    layer_norm_before: bool = False
    layer_norm_after: bool = False
    gate: bool = False

    def _validate(self) -> None:
        super()._validate()
        if self.activation not in ACTIVATIONS:
            raise self._bad("activation", f"one of {ACTIVATIONS}")
        if self.init not in INITS:
            raise self._bad("init", f"one of {INITS}")
        if self.bottleneck_size is None and not (self.reduction_factor > 0):
            raise self._bad("reduction_factor", "a number > 0")
        if self.bottleneck_size is not None and (
            not isinstance(self.bottleneck_size, int) or self.bottleneck_size < 1
        ):
            raise self._bad("bottleneck_size", "an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise self._bad("dropout", "a probability in [0, 1)")
        if self.init_std <= 0:
            raise self._bad("init_std", "a number > 0")

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def pfeiffer(cls, reduction_factor: float = 16, **kwargs: Any) -> AdapterConfig:
        """Pfeiffer et al. (2021): one adapter after the FFN sublayer, ReLU."""
        kwargs.setdefault("activation", "relu")
        kwargs.setdefault("placement", "ffn")
        return cls(reduction_factor=reduction_factor, **kwargs)

    @classmethod
    def houlsby(cls, reduction_factor: float = 16, **kwargs: Any) -> AdapterConfig:
        """Houlsby et al. (2019): adapters after both the attention and the FFN sublayers, swish."""
        kwargs.setdefault("activation", "swish")
        kwargs.setdefault("placement", "both")
        return cls(reduction_factor=reduction_factor, **kwargs)

    @classmethod
    def parallel(cls, reduction_factor: float = 16, scaling: float = 4.0, **kwargs: Any) -> AdapterConfig:
        """He et al. (2022): an adapter beside the FFN, ``ffn(x) + 4 * f(x)``, ReLU."""
        kwargs.setdefault("activation", "relu")
        kwargs.setdefault("placement", "parallel")
        return cls(reduction_factor=reduction_factor, scaling=scaling, **kwargs)

    def hidden_size_for(self, width: int) -> int:
        """The bottleneck size for an adapter reading hidden states of the given width."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, int(width // self.reduction_factor))


def make_activation(name: str) -> nn.Module:
    """The activation module for an ``AdapterConfig.activation`` name (one of ``ACTIVATIONS``)."""
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


# Side-by-side weights of adapter groups, keyed by the adapters' weight tensors (identity, storage, version
# counter): any in-place update (an optimizer step, a load, a dtype change) makes a new key. An entry holds the
# tensors it was built from, so their ids cannot be reused by new tensors while it lives. Bounded: old entries go.
_STACKS: dict[tuple[Any, ...], tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = {}
_STACKS_MAX = 256


def _stacked(adapters: list[AdapterModule]) -> tuple[torch.Tensor, ...]:
    """(down weights (G*r, d_in), down biases (G*r,), up weights (G, r, d_out), up biases (G, d_out), scales (G,))."""
    tensors = tuple(t for a in adapters for t in (a.down.weight, a.down.bias, a.up.weight, a.up.bias, a.scale))
    key = tuple((id(t), t.data_ptr(), t._version, t.dtype) for t in tensors)
    found = _STACKS.get(key)
    if found is not None:
        return found[1]
    with torch.no_grad():
        stacked = (
            torch.cat([a.down.weight for a in adapters]),
            torch.cat([a.down.bias for a in adapters]),
            torch.stack([a.up.weight.t() for a in adapters]),
            torch.stack([a.up.bias for a in adapters]),
            torch.stack([a.scale.reshape(()) for a in adapters]),
        )
    if len(_STACKS) >= _STACKS_MAX:
        _STACKS.pop(next(iter(_STACKS)))
    _STACKS[key] = (tensors, stacked)
    return stacked


class Bottleneck(AdapterModule):
    """A bottleneck adapter reading hidden states of width ``width`` and writing ``out_width``.

    Args:
        width: the width of what the adapter reads (d; the host output, or the sublayer input when parallel).
        config: size, activation, dropout, scaling, init and layer norms.
        mode: ``"output"`` (``h + s·f(h)``), ``"parallel"`` (``residual + s·f(x)``) or ``"post_ln"``; read by the
            slot.
        out_width: the width of the residual it adds to (default ``width``; differs only beside a non-square
            projection in parallel mode).
    """

    method = "bottleneck"

    def __init__(self, width: int, config: AdapterConfig, mode: str = "output", out_width: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.mode = mode
        self.in_width = width
        self.out_width = width if out_width is None else out_width
        self.size = config.hidden_size_for(width)
        self.norm_before = nn.LayerNorm(width) if config.layer_norm_before else None
        self.down = nn.Linear(width, self.size)
        self.act = make_activation(config.activation)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else None
        self.up = nn.Linear(self.size, self.out_width)
        self.norm_after = nn.LayerNorm(self.out_width) if config.layer_norm_after else None
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
        """``s·f(x)`` in the adapter's dtype (or autocast's): (..., d_in) -> (..., d_out)."""
        x = self._input(x)
        z = self.norm_before(x) if self.norm_before is not None else x
        z = self.act(self.down(z))  # (..., r)
        if self.drop is not None:
            z = self.drop(z)
        z = self.up(z) * self.scale  # (..., d_out)
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
            z = self.act(self.down(self._input(x)))
            return base.add(self.up(z).to(base.dtype), alpha=float(self.scale))
        delta = self.branch(x).to(base.dtype)
        return delta if delta_only else base + delta

    @classmethod
    def grouped(
        cls, adapters: list[AdapterModule], x: torch.Tensor, residual: torch.Tensor, group: torch.Tensor
    ) -> torch.Tensor | None:
        """Plain bottlenecks of one size and activation: every adapter's down-projection in ONE matmul (the
        concatenated weights; a few extra columns are cheaper than one call per adapter), each row keeps its own
        adapter's slice, then one batched matmul through each row's up-projection."""
        first = adapters[0]
        assert isinstance(first, Bottleneck)
        same = all(
            isinstance(a, Bottleneck)
            and a._plain()
            and a.size == first.size
            and a.out_width == first.out_width
            and a.config.activation == first.config.activation
            for a in adapters
        )
        if not same or torch.is_grad_enabled() or x.dim() != 3:
            return None
        down_w, down_b, up_w, up_b, scale = _stacked(adapters)
        batch, tokens, _ = x.shape
        z = F.linear(first._input(x), down_w, down_b)  # (B, T, G*r)
        z = z.view(batch, tokens, len(adapters), first.size)[torch.arange(batch, device=x.device), :, group]
        z = first.act(z)  # (B, T, r)
        up_w, up_b, scale = up_w[group], up_b[group], scale[group]  # (B, r, d_out), (B, d_out), (B,)
        out = torch.baddbmm(up_b.unsqueeze(1).to(z.dtype), z, up_w.to(z.dtype))  # (B, T, d_out)
        return residual + (out * scale.view(-1, 1, 1).to(out.dtype)).to(residual.dtype)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast the matmuls run in its dtype whatever the weights are: casting a bf16 input up to the fp32
        # weights' dtype would only be cast back down. Outside autocast, compute in the adapter's own dtype.
        if torch.is_autocast_enabled(x.device.type):
            return x
        return x.to(self.down.weight.dtype)

    def _plain(self) -> bool:
        """down → act → up → scale, nothing else (no norms, gate, or dropout in effect)."""
        return (
            self.norm_before is None
            and self.norm_after is None
            and self.gate is None
            and (self.drop is None or not self.training)
        )

    @property
    def width(self) -> int:
        """The hidden width it writes (= ``in_width`` except beside a non-square projection)."""
        return self.out_width

    def extra_repr(self) -> str:
        widths = f"{self.in_width}" if self.in_width == self.out_width else f"{self.in_width}->{self.out_width}"
        return f"width={widths}, size={self.size}, mode={self.mode}"


def build(target: Target, config: AdapterConfig) -> Bottleneck:
    """The bottleneck adapter ``config`` puts at ``target``."""
    return Bottleneck(target.in_width, config, target.mode, out_width=target.out_width)


METHOD = Method("bottleneck", AdapterConfig, build)
