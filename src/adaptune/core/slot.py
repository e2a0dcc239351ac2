"""The hook point: a ``ModuleDict`` of adapters attached as a child ``adapters`` of the module it adapts.

An ``AdapterSlot`` lives at ``<host>.adapters``, so the host's own parameter names never change and the
adapters' names are ``<host>.adapters.<name>.down.weight`` (fusion layers sit beside them,
``<host>.adapters.<fusion name>.query.weight``). It registers one forward hook on the host (and, for a
parallel adapter beside an FFN without a container, one pre-hook on the FFN's first linear) and applies the
active setup (a ``composition`` tree) to the host's output::

    output mode:    h  -> h + s·f(h)                (an adapter in a Stack: serial)
    parallel mode:  h  -> h + s·f(x)                (x = the FFN input)
    post_ln mode:   LN(v) -> LN(v + s·f(LN(v)))      (host = the sublayer's closing LayerNorm, v = x + h)

Hooks are bound methods of the slot, so ``copy.deepcopy`` of the model rebinds them to the copied slot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .composition import Average, Fuse, PerExample, Stack, adapter_names
from .contract import AdapterModule, MixerModule

__all__ = ["AdapterSlot"]


class AdapterSlot(nn.ModuleDict):
    """Adapters (and fusion layers) attached to one host module, plus the hooks that run them.

    Args:
        host: the module whose output is adapted.
        input_module: for parallel adapters where the FFN input is the input of another module (BERT's
            ``intermediate.dense``); ``None`` if the host's own input is the FFN input.
        layer: the block index of the host (-1 outside blocks), for AdapterDrop.
    """

    def __init__(self, host: nn.Module, input_module: nn.Module | None = None, layer: int = -1) -> None:
        super().__init__()
        self.active: Any = None  # a composition node (name, Stack, Fuse, Average, PerExample) or None
        self.layer = layer
        self.skip = False  # AdapterDrop: always skip this slot
        self.drop_prob = 0.0  # AdapterDrop while training: skip with this probability per forward
        self.has_input_module = input_module is not None
        # The FFN input, captured by the pre-hook and consumed by the forward hook of the same call. It is
        # the only state a forward touches, it never outlives one host call, and recomputation under
        # gradient checkpointing replays both hooks in the same order.
        self._pending_input: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = [host.register_forward_hook(self._after_host, with_kwargs=True)]
        if input_module is not None:
            self._handles.append(input_module.register_forward_pre_hook(self._capture_input))

    def attach_input_module(self, input_module: nn.Module) -> None:
        """Capture the FFN input from ``input_module`` (needed once a pair-mode parallel adapter joins)."""
        if not self.has_input_module:
            self.has_input_module = True
            self._handles.append(input_module.register_forward_pre_hook(self._capture_input))

    def remove_hooks(self) -> None:
        """Detach from the host: the host then runs exactly as before the slot existed."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def adapters(self) -> dict[str, AdapterModule]:
        """The adapters here (fusion layers excluded)."""
        return {n: m for n, m in self.items() if isinstance(m, AdapterModule)}

    def running(self) -> list[str]:
        """Names of the active adapters present in this slot."""
        return [n for n in adapter_names(self.active) if isinstance(self._modules.get(n), AdapterModule)]

    def _modes(self) -> set[str]:
        """Modes of the active adapters here (empty: nothing runs in this slot)."""
        return {self[n].mode for n in self.running()}

    def _capture_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.active is not None and "parallel" in self._modes():
            self._pending_input = args[0]

    def _host_input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        if self.has_input_module:
            x, self._pending_input = self._pending_input, None
            if x is None:
                raise RuntimeError("adaptune: parallel adapter saw the FFN output before its input (hook order)")
            return x
        if args and isinstance(args[0], torch.Tensor):
            return args[0]
        for key in ("hidden_states", "x", "input"):
            if isinstance(kwargs.get(key), torch.Tensor):
                return kwargs[key]
        raise RuntimeError("adaptune: cannot find the input tensor of the hooked module for a parallel adapter")

    def _skipped(self) -> bool:
        if self.skip:
            return True
        return self.training and self.drop_prob > 0 and bool(torch.rand(()) < self.drop_prob)

    def _after_host(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        modes = self._modes() if self.active is not None else set()
        if not modes:
            return None
        if isinstance(output, torch.Tensor):
            h, rest = output, None
        elif isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            h, rest = output[0], output[1:]  # keep tuple outputs (hidden, router_logits, ...) intact
        else:
            raise TypeError(f"adaptune: cannot adapt an output of type {type(output).__name__}")
        x = self._host_input(args, kwargs) if "parallel" in modes else None
        if self._skipped():
            return None
        if "post_ln" in modes:
            # The host is the sublayer's closing LayerNorm: work on its input v = x + h, re-normalise at the end.
            # ``forward`` (not ``__call__``) so this hook does not run again.
            norm = module.forward
            h = norm(self.apply_setup(self.active, args[0], x, norm))
        else:
            h = self.apply_setup(self.active, h, x)
        return h if rest is None else (h, *rest)

    # ---- composition ---------------------------------------------------------------------------
    def apply_setup(self, node: Any, h: torch.Tensor, x: torch.Tensor | None, norm: Any = None) -> torch.Tensor:
        """Apply a composition tree to ``h`` (x: the FFN input for parallel adapters; norm: the host LayerNorm
        for post-LN adapters, where ``h`` is the LayerNorm's input)."""
        if node is None:
            return h
        if isinstance(node, str):
            adapter = self._modules.get(node)
            if not isinstance(adapter, AdapterModule):
                return h  # this adapter has no place here (e.g. other layers only)
            return adapter(self._adapter_input(adapter, h, x, norm), residual=h)
        if isinstance(node, Stack):
            for child in node.children:
                h = self.apply_setup(child, h, x, norm)
            return h
        if isinstance(node, Average):
            outs = [(w, self.apply_setup(c, h, x, norm)) for c, w in zip(node.children, node.weights, strict=True)]
            return sum((w * o for w, o in outs), torch.zeros_like(h))
        if isinstance(node, Fuse):
            return self._fuse(node, h, x, norm)
        if isinstance(node, PerExample):
            return self._per_example(node, h, x, norm)
        raise TypeError(f"adaptune: unknown composition block {node!r}")

    @staticmethod
    def _adapter_input(adapter: AdapterModule, h: torch.Tensor, x: torch.Tensor | None, norm: Any) -> torch.Tensor:
        if adapter.mode == "parallel":
            assert x is not None
            return x
        if adapter.mode == "post_ln":
            return norm(h)
        return h

    def _fuse(self, node: Fuse, h: torch.Tensor, x: torch.Tensor | None, norm: Any = None) -> torch.Tensor:
        present = [c for c in node.children if isinstance(self._modules.get(c), AdapterModule)]
        fusion = self._modules.get(node.name)
        if not present:
            return h
        if not isinstance(fusion, MixerModule):
            raise RuntimeError(f"adaptune: no fusion layer {node.name!r} here; call add_fusion first")
        deltas = []
        for name in present:
            adapter = self[name]
            deltas.append(adapter(self._adapter_input(adapter, h, x, norm), residual=h, delta_only=True))
        # The query is the adapters' input: h itself, or LN(h) where the adapters are post-LN.
        query = norm(h) if any(self[n].mode == "post_ln" for n in present) else h
        out, _ = fusion(query, torch.stack(deltas, dim=-2), residual=h)  # (..., n, d) -> (..., d)
        return out

    def _per_example(
        self, node: PerExample, h: torch.Tensor, x: torch.Tensor | None, norm: Any = None
    ) -> torch.Tensor:
        if h.shape[0] != len(node.setups):
            raise ValueError(
                f"adaptune: per-example setup has {len(node.setups)} entries but the hooked tensor has leading "
                f"dimension {h.shape[0]} (batch size mismatch, or this architecture flattens the batch here)"
            )
        groups: dict[Any, list[int]] = {}
        for i, setup in enumerate(node.setups):
            groups.setdefault(setup, []).append(i)
        if len(groups) == 1:  # the whole batch shares one setup: no gather/scatter
            return self.apply_setup(node.setups[0], h, x, norm)
        out = h
        for setup, rows in groups.items():
            if setup is None:
                continue
            idx = torch.tensor(rows, device=h.device)
            sub_x = x.index_select(0, idx) if x is not None else None
            out = out.index_copy(0, idx, self.apply_setup(setup, h.index_select(0, idx), sub_x, norm))
        return out
