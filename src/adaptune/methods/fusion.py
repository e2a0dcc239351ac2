"""AdapterFusion and adapter averaging: create, train, save and load fusion layers over trained adapters.

A fusion layer sits in every slot that holds at least one of the fused adapters, under the fusion's name
(``<host>.adapters.<fusion>.query.weight`` ...). ``train_fusion`` freezes everything but the fusion layers and
the task head. The value regulariser ``λ·Σ||W_v - I||²`` is added to ``outputs.loss`` by a forward hook on
the model while it trains, so the plain HF ``Trainer`` and any custom loop that uses ``outputs.loss``
optimise it on the same step; ``fusion_value_loss`` gives the same term for loops that build their own loss.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..core.composition import Fuse
from ..core.contract import AdapterModule, MixerModule
from ..core.model import (
    DEFAULT_HEADS,
    ParamSummary,
    adapter_config,
    adapter_modules,
    adapter_slots,
    add_adapter,
    head_modules,
    list_adapters,
    set_active,
    trainable_summary,
)

__all__ = [
    "Fusion",
    "add_fusion",
    "average_adapters",
    "delete_fusion",
    "fusion_modules",
    "fusion_value_loss",
    "list_fusions",
    "train_fusion",
]


class Fusion(MixerModule):
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
        from torch.distributed.tensor import DTensor

        if isinstance(w, DTensor):
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


def list_fusions(model: nn.Module) -> list[str]:
    """Names of the fusion layers in ``model``."""
    names: dict[str, None] = {}
    for slot in adapter_slots(model).values():
        names.update(dict.fromkeys(n for n, m in slot.items() if isinstance(m, Fusion)))
    return list(names)


def fusion_modules(model: nn.Module, name: str) -> dict[str, Fusion]:
    """Full module path -> Fusion layer, for one fusion."""
    found = {
        f"{host}.adapters.{name}": s[name]
        for host, s in adapter_slots(model).items()
        if isinstance(s._modules.get(name), Fusion)
    }
    if not found:
        raise KeyError(f"no fusion named {name!r}; fusions: {list_fusions(model)}")
    return found


def add_fusion(
    model: nn.Module,
    adapters: list[str],
    name: str | None = None,
    *,
    temperature: float = 1.0,
    static: bool = False,
    activate: bool = True,
) -> Fuse:
    """Add a fusion layer over trained ``adapters`` wherever any of them sits; returns the ``Fuse`` setup.

    Args:
        model: the model holding the adapters.
        adapters: two or more adapter names.
        name: the fusion's name (default ``fusion_<a>_<b>...``).
        temperature: softmax temperature, a constant saved with the fusion.
        static: no value projection (attention over the raw adapter outputs).
        activate: make ``Fuse(*adapters)`` the active setup.
    """
    known = list_adapters(model)
    missing = [a for a in adapters if a not in known]
    if missing or len(adapters) < 2:
        raise ValueError(f"add_fusion needs >= 2 adapters of the model; unknown {missing}, adapters: {known}")
    fuse = Fuse(*adapters, name=name)
    if fuse.name in known or fuse.name in list_fusions(model):
        raise ValueError(f"a fusion or adapter named {fuse.name!r} already exists")
    for slot in adapter_slots(model).values():
        present = [a for a in adapters if isinstance(slot._modules.get(a), AdapterModule)]
        if present:
            # Any method fuses: the layer attends over deltas of the adapters' output width, in their dtype.
            ref = slot[present[0]]
            p = next(ref.parameters())
            layer = Fusion(ref.out_width, temperature, static).to(p.device, p.dtype)
            slot[fuse.name] = layer.train(slot.training)
    if activate:
        set_active(model, fuse)
    return fuse


def delete_fusion(model: nn.Module, name: str) -> None:
    """Remove a fusion layer (the adapters stay) and its regulariser hook."""
    modules = fusion_modules(model, name)
    for module in modules.values():
        for handle in getattr(module, "_reg_handles", []):
            handle.remove()
    for slot in adapter_slots(model).values():
        if name in slot:
            del slot[name]
        if isinstance(slot.active, Fuse) and slot.active.name == name:
            slot.active = None


def fusion_value_loss(model: nn.Module, name: str) -> torch.Tensor:
    """Σ over the fusion's layers of ||W_v - I||² (add λ times this to a custom loss)."""
    return torch.stack([m.value_distance() for m in fusion_modules(model, name).values()]).sum()


def _regularise(layers: list[Fusion], weight: float, module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
    # Added only while training and only where the host computed a loss (labels given).
    if not module.training or weight == 0:
        return None

    def term() -> torch.Tensor:  # computed only when there is a loss to add it to
        return weight * torch.stack([m.value_distance() for m in layers]).sum()

    if hasattr(output, "loss") and output.loss is not None:
        output.loss = output.loss + term()
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor) and output[0].dim() == 0:
        return (output[0] + term(), *output[1:])
    return None


def train_fusion(
    model: nn.Module, fuse: Fuse, heads: tuple[str, ...] = DEFAULT_HEADS, regularization: float = 0.01
) -> ParamSummary:
    """Freeze everything but the fusion layers of ``fuse`` and the task head; activate ``fuse``.

    Args:
        model: the model.
        fuse: the setup ``add_fusion`` returned.
        heads: task-head module paths that train too.
        regularization: λ of the value regulariser added to ``outputs.loss`` while training (0: none).
    """
    set_active(model, fuse)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = list(fusion_modules(model, fuse.name).values())
    for layer in layers:
        layer.requires_grad_(True)
        for handle in getattr(layer, "_reg_handles", []):
            handle.remove()
        layer._reg_handles = []
    for head in head_modules(model, heads).values():
        head.requires_grad_(True)
    if regularization and any(layer.value is not None for layer in layers):
        hook = functools.partial(_regularise, layers, float(regularization))
        layers[0]._reg_handles = [model.register_forward_hook(hook, with_kwargs=True)]
    return trainable_summary(model)


def average_adapters(model: nn.Module, names: list[str], new_name: str, weights: list[float] | None = None) -> None:
    """A new adapter whose parameters are the weighted mean of ``names``' parameters (weights sum to 1).

    The adapters must share a config (up to init) and places; the result is a plain adapter, not a setup.
    """
    w = [1.0] * len(names) if weights is None else [float(x) for x in weights]
    if len(w) != len(names) or len(names) < 2 or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError("average_adapters needs >= 2 adapters and one non-negative weight each (not all zero)")
    w = [x / sum(w) for x in w]
    configs = [adapter_config(model, n) for n in names]
    shapes = [
        {k: tuple(v.shape) for p, m in adapter_modules(model, n).items() for k, v in m.state_dict().items()}
        for n in names
    ]
    like = all(type(c) is type(configs[0]) and c.placement == configs[0].placement for c in configs)
    if any(s != shapes[0] for s in shapes[1:]) or not like:
        raise ValueError(
            f"average_adapters: {names} differ in method, shape or placement; only like adapters can be averaged"
        )
    add_adapter(model, new_name, configs[0], activate=False)
    sources = [adapter_modules(model, n) for n in names]
    with torch.no_grad():
        for path, target in adapter_modules(model, new_name).items():
            base = path[: -len(new_name)]
            for key, value in target.state_dict(keep_vars=True).items():
                mix = sum(
                    wi * src[base + n].state_dict()[key].float() for wi, src, n in zip(w, sources, names, strict=True)
                )
                value.copy_(mix.to(value.dtype))
