"""One task head per adapter behind one base model: the server's classification adapters each trained their own
head (classifier, often the pooler too), and a batch mixes them.

The model keeps the head modules of its base; a ``HeadBank`` holds each adapter's head tensors and, while a
batch runs with ``rows`` set, a forward hook on every head *leaf* module an adapter overrides recomputes that
module's output per group of rows with the group's own tensors (``torch.func.functional_call``). Rows whose
adapter does not override a module (e.g. an untrained pooler) keep the base module's output. Groups whose
outputs differ in width (heads with different label counts) are zero-padded on the last dimension to the
widest; callers slice each row to its own label count.

This needs head leaves that are row-wise over the batch's first dimension, as every classification head in
Transformers is (linear layers, poolers, layer norms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.hooks import RemovableHandle

__all__ = ["HeadBank"]

# Up to this many heads, a linear head leaf runs all of them side by side in one matmul; beyond, one call per head.
MAX_STACKED = 32


class HeadBank:
    """Per-adapter head tensors for ``model`` and the hooks that apply them row by row.

    Args:
        model: the base model with its head modules (they are never overwritten).
        required: the head leaf modules every entry must override (the task head proper, e.g. ``classifier``):
            without them an entry would silently use the base's untrained head.
    """

    def __init__(self, model: nn.Module, required: Sequence[str]) -> None:
        self.model = model
        self.required = tuple(required)
        self.rows: list[str | None] | None = None  # per-row head key during a forward; None: hooks stand aside
        self._heads: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # key -> leaf path -> param name -> tensor
        self._hooks: dict[str, RemovableHandle] = {}
        self._inside = False  # functional_call re-enters the hooked module: its hook must not run again
        self._modules = dict(model.named_modules())
        # leaf -> (every version's weights side by side, their bias, head key -> version index)
        self._stacked: dict[str, tuple[torch.Tensor, torch.Tensor, dict[str | None, int]]] = {}

    def add(self, key: str, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Register the head tensors (state-dict keys of ``model``) of adapter ``key``.

        Raises:
            ValueError: a key names no parameter of the model, or a required head module is not covered.
        """
        by_leaf: dict[str, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            leaf, _, param = name.rpartition(".")
            module = self._modules.get(leaf)
            if module is None or param not in dict(module.named_parameters(recurse=False)):
                raise ValueError(f"{source}: head tensor {name!r} names no parameter of {type(self.model).__name__}")
            like = next(module.parameters())  # the head's own dtype and device (the serving precision)
            by_leaf.setdefault(leaf, {})[param] = value.detach().to(dtype=like.dtype, device=like.device)
        missing = [m for m in self.required if m not in by_leaf]
        if missing:
            raise ValueError(f"{source}: no trained head for {missing} (a classification adapter carries its head)")
        self._heads[key] = by_leaf
        self._stacked.clear()
        for leaf in by_leaf:
            if leaf not in self._hooks:
                self._hooks[leaf] = self._modules[leaf].register_forward_hook(self._make_hook(leaf))

    def _linear_rows(self, leaf: str, module: nn.Linear, x: torch.Tensor, rows: list[str | None]) -> torch.Tensor:
        """A linear head leaf for rows with different weights in one matmul: the weights of every head that
        overrides it, and the base's, side by side (built once per bank change), then each row keeps its own
        version's slice. A few hundred unused output columns cost less than one small matmul per head."""
        stacked = self._stacked.get(leaf)
        if stacked is None:
            keys: list[str | None] = [None, *(k for k, leaves in self._heads.items() if leaf in leaves)]
            weight, bias = _stacked_linear(module, [self._heads[k][leaf] if k is not None else None for k in keys])
            stacked = self._stacked[leaf] = (weight, bias, {k: g for g, k in enumerate(keys)})
        weight, bias, index = stacked
        group = torch.tensor([index.get(k, 0) for k in rows], device=x.device)  # 0: the base's own weights
        out = F.linear(x, weight, bias).view(x.shape[0], len(index), -1)  # (B, heads + 1, out_max)
        return out[torch.arange(x.shape[0], device=x.device), group]

    def remove(self, key: str) -> None:
        """Forget adapter ``key``'s head (hooks stay: they stand aside for rows without an override)."""
        self._heads.pop(key, None)
        self._stacked.clear()

    def _make_hook(self, leaf: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if self.rows is None or self._inside or not isinstance(output, torch.Tensor):
                return None
            return self._per_group(leaf, module, args[0], output)

        return hook

    def _per_group(self, leaf: str, module: nn.Module, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        rows = self.rows or []
        if len(rows) != x.shape[0]:
            raise ValueError(f"adaptune serve: {len(rows)} head keys for a batch of {x.shape[0]} rows at {leaf}")
        groups: dict[str | None, list[int]] = {}
        for i, key in enumerate(rows):
            has = key is not None and leaf in self._heads.get(key, {})
            groups.setdefault(key if has else None, []).append(i)
        if isinstance(module, nn.Linear) and x.dim() == 2 and len(groups) > 1 and len(self._heads) <= MAX_STACKED:
            return self._linear_rows(leaf, module, x, rows)
        outs: list[tuple[list[int], torch.Tensor]] = []
        self._inside = True
        try:
            for key, idx in groups.items():
                if key is None:
                    outs.append((idx, base_out[idx]))
                    continue
                sel = x.index_select(0, torch.tensor(idx, device=x.device))
                outs.append((idx, functional_call(module, self._heads[key][leaf], (sel,), strict=False)))
        finally:
            self._inside = False
        width = max(o.shape[-1] for _, o in outs)
        result = base_out.new_zeros((*base_out.shape[:-1], width))
        for idx, out in outs:
            result[idx, ..., : out.shape[-1]] = out.to(result.dtype)
        return result


def _stacked_linear(
    module: nn.Linear, overrides: list[dict[str, torch.Tensor] | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of several versions of one linear (``None``: the module's own), each zero-padded to the widest
    output and concatenated: (G * out_max, in) and (G * out_max,)."""
    weights, biases = [], []
    for params in overrides:
        params = params or {}
        weight = params.get("weight", module.weight)
        bias = params.get("bias", module.bias)
        weights.append(weight)
        biases.append(bias if bias is not None else weight.new_zeros(weight.shape[0]))
    widest = max(w.shape[0] for w in weights)
    weight = torch.cat([F.pad(w, (0, 0, 0, widest - w.shape[0])) for w in weights])
    bias = torch.cat([F.pad(b, (0, widest - b.shape[0])) for b in biases])
    return weight, bias
