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
from torch.nn import functional as F

from .config import AdapterConfig

__all__ = ["Bottleneck", "Fusion", "make_activation"]


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


class Bottleneck(nn.Module):
    """A bottleneck adapter for hidden states of width ``width``.

    Args:
        width: the host's hidden size at this position (d).
        config: size, activation, dropout, scaling, init and layer norms.
        mode: ``"output"`` (``h + s·f(h)``) or ``"parallel"`` (``residual + s·f(x)``); read by the hook.
    """

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


class Fusion(nn.Module):
    """AdapterFusion (Pfeiffer et al. 2021, https://arxiv.org/abs/2005.00247) at one place.

    For the adapter input ``h`` (..., d) and the adapters' deltas ``u`` (..., n, d)::

        q = W_q h + b_q              k_i = W_k u_i + b_k          v_i = W_v u_i   (W_v starts as identity)
        p = softmax_i(q·k_i / T)     h' = h + Σ_i p_i v_i

    ``static=True`` drops the value projection (v_i = u_i). ``T`` is a constant saved with the weights; nothing
    here changes during ``forward``. Returns ``(h', p)`` so callers can inspect the attention.
    """

    def __init__(self, width: int, temperature: float = 1.0, static: bool = False) -> None:
        super().__init__()
        self.width = width
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = None if static else nn.Linear(width, width, bias=False)
        self.register_buffer("temperature", torch.tensor(float(temperature)), persistent=True)
        with torch.no_grad():
            for lin in (self.query, self.key):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            if self.value is not None:
                self.value.weight.copy_(torch.eye(width))

    def forward(
        self, h: torch.Tensor, deltas: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (the query): (..., d), deltas: (..., n, d) -> (residual + Σ p·v (..., d), p (..., n)).

        ``residual`` defaults to ``h``; post-LN placements query with LN(v) and add to v.
        """
        z = h.to(self.query.weight.dtype)
        u = deltas.to(self.query.weight.dtype)
        if not torch.is_grad_enabled():  # inference: W_q and W_k folded into one matrix, one matmul per token
            m, c = self._folded_query_key()
            qk = F.linear(z, m, c)
            scores = (u * qk.unsqueeze(-2)).sum(-1) / self.temperature  # (..., n); q·b_k cancels in the softmax
            return self._mix(h, u, scores.softmax(-1), residual)
        q = self.query(z)  # (..., d)
        # Exact rewrite of the formula above with 3 matmuls per token instead of 2n + 1:
        #   q·k_i = (W_kᵀ q)·u_i + q·b_k        (project the query once, not every delta)
        #   Σ_i p_i W_v u_i = W_v (Σ_i p_i u_i) (mix first, then one value projection; Σ p_i = 1)
        # q·b_k is the same for every i, so it cancels in the softmax; it stays in the graph so b_k gets its
        # (zero) gradient as before and DDP sees every parameter used.
        qk = q @ self.key.weight  # (..., d)
        shift = (q * self.key.bias).sum(-1, keepdim=True)  # (..., 1)
        # multiply-and-sum beats a batched (n × d) @ (d × 1) matmul per token by ~4x on CPU
        scores = ((u * qk.unsqueeze(-2)).sum(-1) + shift) / self.temperature  # (..., n)
        return self._mix(h, u, scores.softmax(-1), residual)

    def _mix(
        self, h: torch.Tensor, u: torch.Tensor, p: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mixed = (p.unsqueeze(-2) @ u).squeeze(-2)  # (..., d)
        if self.value is not None:
            mixed = self.value(mixed)
        base = h if residual is None else residual
        return base + mixed.to(base.dtype), p

    def _folded_query_key(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_kᵀ W_q, W_kᵀ b_q): q·k_i up to the constant q·b_k, cached until a weight changes (in-place
        optimizer steps bump ``_version``; loading new tensors changes ``data_ptr``)."""
        wq, bq, wk = self.query.weight, self.query.bias, self.key.weight
        key = tuple((t.data_ptr(), t._version) for t in (wq, bq, wk))
        cached = self.__dict__.get("_fold")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, wk.T @ wq, wk.T @ bq)
            self.__dict__["_fold"] = cached  # a plain attribute: not a buffer, never saved
        return cached[1], cached[2]

    def value_distance(self) -> torch.Tensor:
        """||W_v - I||² (0 for a static fusion): the regulariser that keeps the value map near identity."""
        if self.value is None:
            return self.query.weight.new_zeros(())
        w = self.value.weight
        from .distributed import _is_dtensor

        if _is_dtensor(w):
            return _sharded_distance_to_identity(w)
        eye = torch.eye(self.width, device=w.device, dtype=w.dtype)
        return (w - eye).pow(2).sum()

    def extra_repr(self) -> str:
        return f"width={self.width}, static={self.value is None}"


def _sharded_distance_to_identity(w: torch.Tensor) -> torch.Tensor:
    """``||W - I||²`` of a row-sharded DTensor (FSDP2 shards ``W_v`` outside its block's forward). Each rank
    differentiates its own rows, so the gradient lands on its shard where FSDP adds the reduced task gradient;
    the value is the global sum, so a loss that includes it matches one process."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    if tuple(w.placements) != (Shard(0),):
        raise RuntimeError(f"adaptune: fusion value weight sharded as {w.placements}; expected rows (Shard(0))")
    local = w.to_local()
    rows = -(-w.shape[0] // w.device_mesh.size())  # torch.chunk sizes, as FSDP2 shards: ceil(d / world)
    start = w.device_mesh.get_local_rank() * rows
    eye = torch.eye(w.shape[0], w.shape[1], device=local.device, dtype=local.dtype)[start : start + local.shape[0]]
    part = (local - eye).pow(2).sum()
    total = part.detach().clone()
    dist.all_reduce(total, group=w.device_mesh.get_group())
    return part + (total - part.detach())
