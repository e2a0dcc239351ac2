"""Composition blocks: how several adapters combine at one place, as small serialisable trees.

    Stack("lang", "task")              h' = task(lang(h))                    serial
    Fuse("a", "b", "c")                h' = h + Σ_i p_i · V(f_i(h))          attention over adapter outputs
    Average("a", "b", weights=(3, 1))  h' = h + Σ_i w_i · f_i(h), Σ w = 1    weights mean what they say
    PerExample(("a", None, "b"))       example j of the batch runs its own setup (None: no adapter)
    Parallel("a", "b")                 every child runs on the whole batch in one pass; k·B output rows

What may contain what (``NESTING``): a Stack holds adapters, Fuse, Average or Stack; Fuse holds adapters only
(its attention weighs single adapter outputs); Average holds adapters or Stacks; PerExample holds adapters or
any block, one per example, and nothing holds a PerExample; Parallel holds adapters, Stack, Fuse, Average or None
(the bare base model), and nothing holds a Parallel (it changes the batch size of everything after it). Anything
else is refused when activated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "BLOCKS",
    "NESTING",
    "Average",
    "Block",
    "Fuse",
    "Node",
    "Parallel",
    "PerExample",
    "Setup",
    "Stack",
    "adapter_names",
    "from_dict",
    "parse",
    "to_dict",
]


@dataclass(frozen=True)
class Block:
    """What every composition block shares: its ``children`` (the tree functions below only read those) and the
    extra fields it writes to ``to_dict`` besides ``type`` and ``children``."""

    children: tuple[Setup, ...]
    extra_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_parts(cls, children: list[Setup], data: dict[str, Any]) -> Block:
        """Rebuild a block from its children and the extra fields of its ``to_dict`` form."""
        return cls(*children)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Stack(Block):
    """Apply children in order: ``h' = c_n(...c_1(h))``."""

    children: tuple[Node, ...]

    def __init__(self, *children: Node) -> None:
        object.__setattr__(self, "children", tuple(children))


@dataclass(frozen=True)
class Fuse(Block):
    """AdapterFusion over the named adapters; ``name`` is the fusion layer's name in the model."""

    children: tuple[str, ...]
    name: str
    extra_fields: ClassVar[tuple[str, ...]] = ("name",)

    def __init__(self, *children: str, name: str | None = None) -> None:
        object.__setattr__(self, "children", tuple(children))
        default = "fusion_" + "_".join(c if isinstance(c, str) else type(c).__name__.lower() for c in children)
        object.__setattr__(self, "name", name or default)

    @classmethod
    def from_parts(cls, children: list[Setup], data: dict[str, Any]) -> Fuse:
        return cls(*children, name=data.get("name"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Average(Block):
    """Weighted mean of the children's outputs; weights are normalised to sum to 1."""

    children: tuple[Node, ...]
    weights: tuple[float, ...]
    extra_fields: ClassVar[tuple[str, ...]] = ("weights",)

    def __init__(self, *children: Node, weights: Iterable[float] | None = None) -> None:
        w = tuple(float(x) for x in (weights if weights is not None else [1.0] * len(children)))
        if len(w) != len(children) or any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"Average weights {w}: need one non-negative weight per child, not all zero")
        object.__setattr__(self, "children", tuple(children))
        object.__setattr__(self, "weights", tuple(x / sum(w) for x in w))

    @classmethod
    def from_parts(cls, children: list[Setup], data: dict[str, Any]) -> Average:
        return cls(*children, weights=data.get("weights"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PerExample(Block):
    """One setup per example in the batch (``None``: that example runs without adapters).

    Under ``generate(num_beams=k)`` or ``num_return_sequences=k`` the batch holds k rows per prompt
    (``repeat_interleave`` order); the slot then runs each setup on its prompt's k rows.
    """

    children: tuple[Node | None, ...]

    def __init__(self, setups: Iterable[Node | None]) -> None:
        object.__setattr__(self, "children", tuple(setups))

    @property
    def setups(self) -> tuple[Node | None, ...]:
        """The per-example setups (the block's ``children``; the name of the constructor argument)."""
        return self.children

    @classmethod
    def from_parts(cls, children: list[Setup], data: dict[str, Any]) -> PerExample:
        return cls(children)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Parallel(Block):
    """Run every child on the same input in one forward pass; each returns its own output.

    On a batch of B rows the model returns k·B rows, in block order: rows ``[i·B, (i+1)·B)`` are what the model
    gives with child i alone (``core.parallel.split_parallel(tensor, k)`` cuts them apart). ``None`` as a child
    is the bare base model. How the batch is replicated (at the first adapted block or at the model's entry) is
    described in ``core.parallel``.
    """

    children: tuple[Node | None, ...]

    def __init__(self, *children: Node | None) -> None:
        object.__setattr__(self, "children", tuple(children))


# What may stand where a setup is expected: an adapter name or a block that may be nested ...
Node = str | Stack | Fuse | Average
# ... and, at the top only, a PerExample or a Parallel, or None for "no adapters".
Setup = Node | PerExample | Parallel | None

# block type name -> class, for ``from_dict``
BLOCKS: dict[str, type[Block]] = {cls.__name__: cls for cls in (Stack, Fuse, Average, PerExample, Parallel)}

# block type -> the child kinds it may hold ("adapter" = a plain adapter name)
NESTING: dict[str, tuple[str, ...]] = {
    "Stack": ("adapter", "Stack", "Fuse", "Average"),
    "Fuse": ("adapter",),
    "Average": ("adapter", "Stack"),
    "PerExample": ("adapter", "Stack", "Fuse", "Average", "none"),
    "Parallel": ("adapter", "Stack", "Fuse", "Average", "none"),
}


def _kind(node: Any) -> str:
    if node is None:
        return "none"
    if isinstance(node, str):
        return "adapter"
    return type(node).__name__


def validate(node: Any, known: list[str]) -> None:
    """Raise ValueError if ``node`` nests blocks illegally, KeyError if it names unknown adapters."""
    kind = _kind(node)
    if kind == "adapter":
        if node not in known:
            raise KeyError(f"unknown adapter {node!r}; adapters in the model: {known}")
        return
    if kind not in NESTING or not isinstance(node, Block):
        raise ValueError(f"{node!r} is not an adapter name or a composition block")
    if not node.children:
        raise ValueError(f"{kind} needs at least one child")
    for child in node.children:
        if _kind(child) not in NESTING[kind]:
            top = " (PerExample and Parallel change which rows run what: they stand only at the top)"
            hint = top if _kind(child) in ("PerExample", "Parallel") else ""
            raise ValueError(
                f"{kind} cannot contain {_kind(child)} ({child!r}); allowed: {', '.join(NESTING[kind])}{hint}"
            )
        if child is not None:
            validate(child, known)


def adapter_names(node: Setup) -> list[str]:
    """Every adapter name a setup uses, in first-use order."""
    if node is None:
        return []
    if isinstance(node, str):
        return [node]
    seen: dict[str, None] = {}
    for child in node.children:
        seen.update(dict.fromkeys(adapter_names(child)))
    return list(seen)


def to_dict(node: Setup) -> Any:
    """JSON-ready form: a name, ``None``, or ``{"type": ..., "children": [...], <extra fields>}``."""
    if node is None or isinstance(node, str):
        return node
    out: dict[str, Any] = {"type": type(node).__name__, "children": [to_dict(c) for c in node.children]}
    for field in node.extra_fields:
        value = getattr(node, field)
        out[field] = list(value) if isinstance(value, tuple) else value
    return out


def from_dict(data: Any) -> Setup:
    """Inverse of ``to_dict``; also reads the older ``{"type": "PerExample", "setups": [...]}`` form."""
    if data is None or isinstance(data, str):
        return data
    if not isinstance(data, dict) or data.get("type") not in BLOCKS:
        raise ValueError(f"not a composition: {data!r}")
    raw = data.get("children", data.get("setups", []))  # "setups": PerExample as written before it had children
    return BLOCKS[data["type"]].from_parts([from_dict(c) for c in raw], data)  # type: ignore[return-value]


def parse(text: str) -> Node | Parallel:
    """Read ``"Stack(lang, Fuse(a, b))"``, ``"Average(a, b)"``, ``"Average(a:3, b:1)"``, ``"Parallel(a, b)"`` or a
    plain name (where a Parallel may stand is checked on activation, as for every block)."""
    tokens = [t for t in re.split(r"\s*([(),:])\s*", text.strip()) if t]
    pos = 0

    def node() -> Any:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"composition {text!r}: unexpected end")
        tok = tokens[pos]
        pos += 1
        if tok in ("Stack", "Fuse", "Average", "Parallel") and pos < len(tokens) and tokens[pos] == "(":
            pos += 1
            children: list[Node] = []
            weights: list[float] = []
            while True:
                children.append(node())
                if pos < len(tokens) and tokens[pos] == ":":
                    weights.append(float(tokens[pos + 1]))
                    pos += 2
                if pos >= len(tokens):
                    raise ValueError(f"composition {text!r}: missing ')'")
                sep = tokens[pos]
                pos += 1
                if sep == ")":
                    break
                if sep != ",":
                    raise ValueError(f"composition {text!r}: expected ',' or ')' but got {sep!r}")
            if tok == "Stack":
                return Stack(*children)
            if tok == "Fuse":
                return Fuse(*children)  # type: ignore[arg-type]
            if tok == "Parallel":
                return Parallel(*children)
            return Average(*children, weights=tuple(weights) if weights else None)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
            raise ValueError(f"composition {text!r}: unexpected {tok!r}")
        return tok

    result: Node | Parallel = node()
    if pos != len(tokens):
        raise ValueError(f"composition {text!r}: unexpected {tokens[pos]!r}")
    return result
