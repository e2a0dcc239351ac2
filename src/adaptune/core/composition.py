"""Composition blocks: how several adapters combine at one place, as small serialisable trees.

    Stack("lang", "task")              h' = task(lang(h))                    serial
    Fuse("a", "b", "c")                h' = h + Σ_i p_i · V(f_i(h))          attention over adapter outputs
    Average("a", "b", weights=(3, 1))  h' = h + Σ_i w_i · f_i(h), Σ w = 1    weights mean what they say
    PerExample(("a", None, "b"))       example j of the batch runs its own setup (None: no adapter)

What may contain what (``NESTING``): a Stack holds adapters, Fuse, Average or Stack; Fuse holds adapters only
(its attention weighs single adapter outputs); Average holds adapters or Stacks; PerExample holds adapters or
any block, one per example, and nothing holds a PerExample. Anything else is refused when activated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "NESTING",
    "Average",
    "Fuse",
    "Node",
    "PerExample",
    "Stack",
    "adapter_names",
    "from_dict",
    "parse",
    "to_dict",
]


@dataclass(frozen=True)
class Stack:
    """Apply children in order: ``h' = c_n(...c_1(h))``."""

    children: tuple[Node, ...]

    def __init__(self, *children: Node) -> None:
        object.__setattr__(self, "children", tuple(children))


@dataclass(frozen=True)
class Fuse:
    """AdapterFusion over the named adapters; ``name`` is the fusion layer's name in the model."""

    children: tuple[str, ...]
    name: str

    def __init__(self, *children: str, name: str | None = None) -> None:
        object.__setattr__(self, "children", tuple(children))
        default = "fusion_" + "_".join(c if isinstance(c, str) else type(c).__name__.lower() for c in children)
        object.__setattr__(self, "name", name or default)


@dataclass(frozen=True)
class Average:
    """Weighted mean of the children's outputs; weights are normalised to sum to 1."""

    children: tuple[Node, ...]
    weights: tuple[float, ...]

    def __init__(self, *children: Node, weights: tuple[float, ...] | None = None) -> None:
        w = tuple(float(x) for x in (weights if weights is not None else [1.0] * len(children)))
        if len(w) != len(children) or any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"Average weights {w}: need one non-negative weight per child, not all zero")
        object.__setattr__(self, "children", tuple(children))
        object.__setattr__(self, "weights", tuple(x / sum(w) for x in w))


@dataclass(frozen=True)
class PerExample:
    """One setup per example in the batch (``None``: that example runs without adapters)."""

    setups: tuple[Node | None, ...]

    def __init__(self, setups: Any) -> None:
        object.__setattr__(self, "setups", tuple(setups))


Node = Union[str, Stack, Fuse, Average]  # noqa: UP007 (a runtime alias used in isinstance-free annotations)

# block type -> the child kinds it may hold ("adapter" = a plain adapter name)
NESTING: dict[str, tuple[str, ...]] = {
    "Stack": ("adapter", "Stack", "Fuse", "Average"),
    "Fuse": ("adapter",),
    "Average": ("adapter", "Stack"),
    "PerExample": ("adapter", "Stack", "Fuse", "Average", "none"),
}


def _kind(node: Any) -> str:
    if node is None:
        return "none"
    if isinstance(node, str):
        return "adapter"
    return type(node).__name__


def validate(node: Any, known: list[str]) -> None:
    """Raise ValueError if ``node`` nests blocks illegally or names unknown adapters."""
    kind = _kind(node)
    if kind == "adapter":
        if node not in known:
            raise KeyError(f"unknown adapter {node!r}; adapters in the model: {known}")
        return
    if kind not in NESTING:
        raise ValueError(f"{node!r} is not an adapter name or a composition block")
    children = node.setups if kind == "PerExample" else node.children
    if not children:
        raise ValueError(f"{kind} needs at least one child")
    for child in children:
        if _kind(child) not in NESTING[kind]:
            raise ValueError(f"{kind} cannot contain {_kind(child)} ({child!r}); allowed: {', '.join(NESTING[kind])}")
        if child is not None:
            validate(child, known)


def adapter_names(node: Any) -> list[str]:
    """Every adapter name a setup uses, in first-use order."""
    if node is None:
        return []
    if isinstance(node, str):
        return [node]
    children = node.setups if isinstance(node, PerExample) else node.children
    seen: dict[str, None] = {}
    for child in children:
        seen.update(dict.fromkeys(adapter_names(child)))
    return list(seen)


def to_dict(node: Any) -> Any:
    """JSON-ready form: a name, or ``{"type": ..., "children": [...], ...}``."""
    if node is None or isinstance(node, str):
        return node
    if isinstance(node, PerExample):
        return {"type": "PerExample", "setups": [to_dict(c) for c in node.setups]}
    out: dict[str, Any] = {"type": type(node).__name__, "children": [to_dict(c) for c in node.children]}
    if isinstance(node, Fuse):
        out["name"] = node.name
    if isinstance(node, Average):
        out["weights"] = list(node.weights)
    return out


def from_dict(data: Any) -> Any:
    """Inverse of ``to_dict``."""
    if data is None or isinstance(data, str):
        return data
    if not isinstance(data, dict) or data.get("type") not in NESTING:
        raise ValueError(f"not a composition: {data!r}")
    kind = data["type"]
    if kind == "PerExample":
        return PerExample(from_dict(c) for c in data["setups"])
    children = [from_dict(c) for c in data.get("children", [])]
    if kind == "Stack":
        return Stack(*children)
    if kind == "Fuse":
        return Fuse(*children, name=data.get("name"))
    return Average(*children, weights=data.get("weights"))


def parse(text: str) -> Node:
    """Read ``"Stack(lang, Fuse(a, b))"``, ``"Average(a, b)"``, ``"Average(a:3, b:1)"`` or a plain name."""
    tokens = [t for t in re.split(r"\s*([(),:])\s*", text.strip()) if t]
    pos = 0

    def node() -> Node:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"composition {text!r}: unexpected end")
        tok = tokens[pos]
        pos += 1
        if tok in ("Stack", "Fuse", "Average") and pos < len(tokens) and tokens[pos] == "(":
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
            return Average(*children, weights=tuple(weights) if weights else None)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
            raise ValueError(f"composition {text!r}: unexpected {tok!r}")
        return tok

    result = node()
    if pos != len(tokens):
        raise ValueError(f"composition {text!r}: unexpected {tokens[pos]!r}")
    return result
