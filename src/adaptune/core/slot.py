"""The hook point: a ``ModuleDict`` of adapters attached as a child ``adapters`` of the module it adapts.

An ``AdapterSlot`` lives at ``<host>.adapters``, so the host's own parameter names never change and the
adapters' names are ``<host>.adapters.<name>.down.weight`` (fusion layers sit beside them,
``<host>.adapters.<fusion name>.query.weight``). It registers one forward hook on the host (and, for a
parallel adapter beside an FFN without a container, one pre-hook on the FFN's first linear) and applies the
active setup (a ``composition`` tree) to the host's output::

    output mode:    h  -> h + s·f(h)                (an adapter in a Stack: serial)
    parallel mode:  h  -> h + s·f(x)                (x = the FFN input)
    post_ln mode:   LN(v) -> LN(v + s·f(LN(v)))      (host = the sublayer's closing LayerNorm, v = x + h)
    input mode:     x  -> f(x), then the host runs   (a pre-hook on the host; (IA)³'s FFN scaling)
    model mode:     kwargs -> f(model, kwargs)       (a pre-hook on the whole model; prompt / prefix tuning)

The active setup runs twice per host call when input-mode adapters are present: once on the host's input (only
input-mode adapters act, the others pass through) and once on its output (the other way round).

Hooks are bound methods of the slot, so ``copy.deepcopy`` of the model rebinds them to the copied slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .composition import Average, Fuse, Parallel, PerExample, Setup, Stack, adapter_names
from .contract import AdapterModule, MixerModule, ModelAdapter

__all__ = ["AdapterSlot", "ForwardState"]

# Most adapters of one kind a slot hands to a method's grouped form at once (beyond: only those a batch uses).
GROUPED_POOL = 32


class ForwardState(NamedTuple):
    """What a composition reads at one call of the host, channels last.

    Attributes:
        h: the hidden state being adapted, (B, T, d); in post-LN mode the closing LayerNorm's input ``v``.
        x: the FFN input, (B, T, d_in), for parallel adapters (``None`` when no parallel adapter runs).
        norm: the host LayerNorm, for post-LN adapters (``None`` otherwise).
        before_host: the setup runs on the host's input (only input-mode adapters act) rather than its output.
    """

    h: torch.Tensor
    x: torch.Tensor | None = None
    norm: Callable[[torch.Tensor], torch.Tensor] | None = None
    before_host: bool = False

    def rows(self, idx: torch.Tensor) -> ForwardState:
        """The same state for the batch rows ``idx`` only."""
        return self._replace(h=self.h.index_select(0, idx), x=None if self.x is None else self.x.index_select(0, idx))

    def chunk(self, start: int, length: int) -> ForwardState:
        """The same state for the contiguous batch rows ``[start, start + length)`` (views, no copy)."""
        x = None if self.x is None else self.x.narrow(0, start, length)
        return self._replace(h=self.h.narrow(0, start, length), x=x)


class AdapterSlot(nn.ModuleDict):
    """Adapters (and fusion layers) attached to one host module, plus the hooks that run them.

    Args:
        host: the module whose output is adapted.
        input_module: for parallel adapters where the FFN input is the input of another module (BERT's
            ``intermediate.dense``); ``None`` if the host's own input is the FFN input.
        layer: the block index of the host (-1 outside blocks), for AdapterDrop.
        channels_first: the host's output and the FFN input are (B, C, T) (1x1 ``nn.Conv1d`` projections, as in
            SqueezeBERT); the slot runs the adapters on (B, T, C) and hands (B, C, T) back.
    """

    def __init__(
        self, host: nn.Module, input_module: nn.Module | None = None, layer: int = -1, channels_first: bool = False
    ) -> None:
        super().__init__()
        self.active: Setup = None
        self.layer = layer
        self.channels_first = channels_first
        self.skip = False  # AdapterDrop: always skip this slot
        self.drop_prob = 0.0  # AdapterDrop while training: skip with this probability per forward
        self.has_input_module = input_module is not None
        self.has_input_hook = False  # a pre-hook on the host runs input-mode adapters (attach_input_hook)
        # The hooks that replicate the batch while a Parallel is active (core.parallel; shared by every slot,
        # kept here so the model object itself gets no new attributes); typed loosely so slot does not import it.
        self.parallel_router: Any = None
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

    def attach_input_hook(self, host: nn.Module) -> None:
        """Run input-mode adapters on ``host``'s input (once an input-mode adapter joins; others never pay for
        the pre-hook)."""
        if not self.has_input_hook:
            self.has_input_hook = True
            self._handles.append(host.register_forward_pre_hook(self._before_host))

    def attach_model_hook(self, model: nn.Module) -> None:
        """Run model-mode adapters (``ModelAdapter``) on ``model``'s keyword arguments before its forward."""
        if not getattr(self, "has_model_hook", False):
            self.has_model_hook = True
            self._handles.append(model.register_forward_pre_hook(self._before_model, with_kwargs=True))

    def _before_model(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        chain = self._model_chain(self.active) if self.active is not None and not self.skip else []
        if not chain:
            return None
        if args:  # HF models take input_ids first; the adapters rewrite inputs by name
            if len(args) > 1 or "input_ids" in kwargs:
                raise TypeError(
                    f"adaptune: prompt / prefix tuning read the model's inputs by keyword; got {len(args)} positional "
                    "arguments (pass input_ids=..., attention_mask=... by name)"
                )
            kwargs = {"input_ids": args[0], **kwargs}
        for name in chain:
            kwargs = self[name](module, kwargs)
        return (), kwargs

    def _model_chain(self, node: Setup) -> list[str]:
        """The model-mode adapters ``node`` runs here, in order. They rewrite the inputs every row shares (sequence
        length, cache), so they may run alone or in a ``Stack``; any other block holding one is refused."""
        if isinstance(node, str):
            return [node] if isinstance(self._modules.get(node), ModelAdapter) else []
        if isinstance(node, Stack):
            return [name for child in node.children for name in self._model_chain(child)]
        held = [n for n in adapter_names(node) if isinstance(self._modules.get(n), ModelAdapter)]
        if held:
            raise ValueError(
                f"adaptune: {node!r} holds {held}: prompt / prefix tuning change the inputs the whole batch shares "
                "(sequence length, attention cache), so they run alone or in a Stack only, not inside "
                f"{type(node).__name__}"
            )
        return []

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

    # ---- hooks ---------------------------------------------------------------------------------
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

    def _before_host(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        if self.active is None or "input" not in self._modes() or self._skipped():
            return None
        if not args or not isinstance(args[0], torch.Tensor):
            raise RuntimeError("adaptune: an input-mode adapter needs the hooked module's input as its first argument")
        x = self.apply_setup(self.active, ForwardState(self._last(args[0]), before_host=True))
        return (self._last(x), *args[1:])

    def _skipped(self) -> bool:
        if self.skip:
            return True
        return self.training and self.drop_prob > 0 and bool(torch.rand(()) < self.drop_prob)

    def _last(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, T) <-> (B, T, C) for channels-first hosts (a transpose is its own inverse); else ``t``."""
        return t.transpose(1, 2) if self.channels_first else t

    def _after_host(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        modes = self._modes() - {"input", "model"} if self.active is not None else set()
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
        x = None if x is None else self._last(x)
        if "post_ln" in modes:
            # The host is the sublayer's closing LayerNorm: work on its input v = x + h, re-normalise at the end.
            # ``forward`` (not ``__call__``) so this hook does not run again.
            norm = self._channels_last_norm(module.forward) if self.channels_first else module.forward
            h = norm(self.apply_setup(self.active, ForwardState(self._last(args[0]), x, norm)))
        else:
            h = self.apply_setup(self.active, ForwardState(self._last(h), x))
        h = self._last(h)
        return h if rest is None else (h, *rest)

    @staticmethod
    def _channels_last_norm(norm: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """A channels-first LayerNorm as a function of (B, T, C) tensors."""
        return lambda v: norm(v.transpose(1, 2)).transpose(1, 2)

    # ---- composition: one handler per block type -----------------------------------------------
    def apply_setup(self, node: Setup, state: ForwardState) -> torch.Tensor:
        """Apply a composition tree to ``state.h`` and return the new hidden state (channels last).

        Raises:
            TypeError: ``node`` is neither an adapter name nor a block in ``HANDLERS``.
        """
        if node is None:
            return state.h
        for cls in type(node).__mro__:  # subclasses of str or of a block use their base's handler
            handler = self.HANDLERS.get(cls)
            if handler is not None:
                return handler(self, node, state)
        raise TypeError(f"adaptune: unknown composition block {node!r}")

    def _adapter(self, name: str, state: ForwardState) -> torch.Tensor:
        adapter = self._modules.get(name)
        if not isinstance(adapter, AdapterModule) or (adapter.mode == "input") != state.before_host:
            return state.h  # no place here (e.g. other layers only), or it acts on the other side of the host
        return adapter(self._adapter_input(adapter, state), residual=state.h)

    def _stack(self, node: Stack, state: ForwardState) -> torch.Tensor:
        for child in node.children:
            state = state._replace(h=self.apply_setup(child, state))
        return state.h

    def _average(self, node: Average, state: ForwardState) -> torch.Tensor:
        here = [n for n in adapter_names(node) if isinstance(self._modules.get(n), AdapterModule)]
        if len({self[n].mode == "input" for n in here}) > 1:
            raise ValueError(
                f"adaptune: {node!r} averages an input-mode adapter with others at one module; an average of "
                "outputs is defined only when every adapter there acts on the same side of the module"
            )
        outs = [(w, self.apply_setup(c, state)) for c, w in zip(node.children, node.weights, strict=True)]
        return sum((w * o for w, o in outs), torch.zeros_like(state.h))

    @staticmethod
    def _adapter_input(adapter: AdapterModule, state: ForwardState) -> torch.Tensor:
        if adapter.mode == "parallel":
            assert state.x is not None  # _after_host captures x whenever a parallel adapter is active
            return state.x
        if adapter.mode == "post_ln":
            assert state.norm is not None  # _after_host passes the host LayerNorm whenever one is post-LN
            return state.norm(state.h)
        return state.h

    def _fuse(self, node: Fuse, state: ForwardState) -> torch.Tensor:
        present = [c for c in node.children if isinstance(self._modules.get(c), AdapterModule)]
        fusion = self._modules.get(node.name)
        if not present or state.before_host:
            return state.h
        if any(self[n].mode == "input" for n in present):
            raise ValueError(f"adaptune: {node!r}: fusion attends over output deltas; input-mode adapters cannot fuse")
        if not isinstance(fusion, MixerModule):
            raise RuntimeError(f"adaptune: no fusion layer {node.name!r} here; call add_fusion first")
        deltas = []
        for name in present:
            adapter = self[name]
            deltas.append(adapter(self._adapter_input(adapter, state), residual=state.h, delta_only=True))
        # The query is the adapters' input: h itself, or LN(h) where the adapters are post-LN.
        post_ln = any(self[n].mode == "post_ln" for n in present)
        query = state.norm(state.h) if post_ln and state.norm is not None else state.h
        out, _ = fusion(query, torch.stack(deltas, dim=-2), residual=state.h)  # (..., n, d) -> (..., d)
        return out

    def _per_example(self, node: PerExample, state: ForwardState) -> torch.Tensor:
        h = state.h
        setups = _rows_setups(node, h.shape[0])
        groups: dict[Setup, list[int]] = {}
        for i, setup in enumerate(setups):
            groups.setdefault(setup, []).append(i)
        if len(groups) == 1:  # the whole batch shares one setup: no gather/scatter
            return self.apply_setup(setups[0], state)
        fast = self._grouped(setups, groups, state)
        if fast is not None:
            return fast
        out = h
        for setup, rows in groups.items():  # one gather/scatter per distinct setup, not per example
            if setup is None:
                continue
            idx = torch.tensor(rows, device=h.device)
            out = out.index_copy(0, idx, self.apply_setup(setup, state.rows(idx)))
        return out

    def _grouped(self, setups: tuple[Setup, ...], groups: dict[Setup, list[int]], state: ForwardState) -> Any:
        """Every row runs one plain adapter of the same method and mode here: the method's ``grouped`` form (one
        batched computation for all rows) when it has one; ``None`` otherwise.

        The adapters handed over are all of that kind in this slot (up to ``GROUPED_POOL``), in a fixed order, so
        the method can keep their weights side by side between calls whatever subset a batch uses."""
        names = list(groups)
        if state.before_host or not all(isinstance(n, str) for n in names):
            return None
        adapters = [self._modules.get(n) for n in names]
        if not all(isinstance(a, AdapterModule) and not a.merged for a in adapters):
            return None
        kind, mode = type(adapters[0]), adapters[0].mode  # type: ignore[union-attr]
        if mode == "input" or any(type(a) is not kind or a.mode != mode for a in adapters):  # type: ignore[union-attr]
            return None
        pool = [n for n, m in self.adapters().items() if type(m) is kind and m.mode == mode and not m.merged]
        x = self._adapter_input(adapters[0], state)  # type: ignore[arg-type]
        for candidates in (pool, sorted(names)) if len(pool) <= GROUPED_POOL else (sorted(names),):
            index = {n: i for i, n in enumerate(candidates)}
            group = torch.tensor([index[s] for s in setups], device=state.h.device)  # type: ignore[index]
            out = kind.grouped([self[n] for n in candidates], x, state.h, group)  # type: ignore[arg-type]
            if out is not None:
                return out
        return None

    def _parallel(self, node: Parallel, state: ForwardState) -> torch.Tensor:
        """Child i runs on rows ``[i·B, (i+1)·B)``: the batch reaches here already replicated k times
        (``core.parallel`` repeats it at the first adapted block or at the model's entry)."""
        k, rows = len(node.children), state.h.shape[0]
        if rows % k:
            raise RuntimeError(
                f"adaptune: {node!r} needs k·B rows here but the hooked tensor has {rows}; was the batch replicated "
                "(set_active installs that) or does this architecture flatten the batch here?"
            )
        b = rows // k
        # Contiguous chunks are views, so one call per child costs no gather; PerExample's grouped form would run
        # every child's down-projection on all k·B rows.
        return torch.cat([self.apply_setup(c, state.chunk(i * b, b)) for i, c in enumerate(node.children)])

    # block type -> its handler; a new block adds one entry here (and its nesting rule in composition.NESTING)
    HANDLERS: ClassVar[dict[type, Callable[[AdapterSlot, Any, ForwardState], torch.Tensor]]] = {
        str: _adapter,
        Stack: _stack,
        Average: _average,
        Fuse: _fuse,
        PerExample: _per_example,
        Parallel: _parallel,
    }


def _rows_setups(node: PerExample, rows: int) -> tuple[Setup, ...]:
    """The setup of each of ``rows`` batch rows: one per example, or k per example when generation expanded the
    batch k-fold (beam search, ``num_return_sequences``: ``repeat_interleave`` order, the k rows of a prompt
    adjacent)."""
    n = len(node.children)
    if rows == n:
        return node.children
    if n and rows > n and rows % n == 0:
        return tuple(setup for setup in node.children for _ in range(rows // n))
    raise ValueError(
        f"adaptune: per-example setup has {n} entries but the hooked tensor has leading dimension {rows} (neither "
        f"the batch size nor a multiple of it as in beam search; or this architecture flattens the batch here)"
    )
