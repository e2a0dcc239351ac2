"""The hook point: a ``ModuleDict`` of adapters attached as a child ``adapters`` of the module it adapts.

An ``AdapterSlot`` lives at ``<host>.adapters``, so the host's own parameter names never change and the
adapters' names are ``<host>.adapters.<name>.down.weight``. It registers one forward hook on the host (and,
for a parallel adapter beside an FFN without a container, one pre-hook on the FFN's first linear) and
applies the active adapters present in it, in activation order::

    output mode:    h  -> A_k(...A_1(h))                  (serial: h + s·f(h) each)
    parallel mode:  h  -> h + s·f(x)                       (x = the FFN input)

Hooks are bound methods of the slot, so ``copy.deepcopy`` of the model rebinds them to the copied slot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .modules import Bottleneck

__all__ = ["AdapterSlot"]


class AdapterSlot(nn.ModuleDict):
    """Adapters attached to one host module, plus the hooks that run them.

    Args:
        host: the module whose output is adapted.
        input_module: for parallel adapters where the FFN input is the input of another module (BERT's
            ``intermediate.dense``); ``None`` if the host's own input is the FFN input.
    """

    def __init__(self, host: nn.Module, input_module: nn.Module | None = None) -> None:
        super().__init__()
        self.active: tuple[str, ...] = ()
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

    def running(self) -> list[str]:
        """Names of the active adapters present in this slot, in application order."""
        return [n for n in self.active if n in self]

    def _capture_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if any(self[n].mode == "parallel" for n in self.running()):
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

    def _after_host(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        names = self.running()
        if not names:
            return None
        if isinstance(output, torch.Tensor):
            h, rest = output, None
        elif isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            h, rest = output[0], output[1:]  # keep tuple outputs (hidden, router_logits, ...) intact
        else:
            raise TypeError(f"adaptune: cannot adapt an output of type {type(output).__name__}")
        x = None
        for name in names:
            adapter: Bottleneck = self[name]
            if adapter.mode == "parallel":
                if x is None:
                    x = self._host_input(args, kwargs)
                h = adapter(x, residual=h)
            else:
                h = adapter(h)
        return h if rest is None else (h, *rest)
