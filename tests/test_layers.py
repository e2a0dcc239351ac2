"""The package's layers: imports flow one way (cli / benchmark / serve -> training -> formats -> methods -> core
-> util) and no module imports itself back through others (no circles), counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "adaptune"
# Lower number = lower layer; a module may import from its own layer and the ones below.
LAYERS = {
    "util": 0,
    "version": 0,
    "core": 1,
    "methods": 2,
    "formats": 3,
    "training": 4,
    "cli": 5,
    "benchmark": 5,
    "serve": 5,
}
ROOT_LAYER = 5  # `adaptune` itself (the public API facade) sits beside the applications


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every adaptune module ``path`` imports, at any depth of the file, as absolute dotted names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "adaptune"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "adaptune":
                continue
            # `from .pkg import module` names a module; `from .module import name` names the module itself
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _exists(candidate) else target)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _layer(module: str) -> int:
    parts = module.split(".")
    return ROOT_LAYER if len(parts) == 1 or parts[1] == "__main__" else LAYERS[parts[1]]


GRAPH = {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_top_level_part_has_a_layer() -> None:
    tops = {p.name if p.is_dir() else p.stem for p in SRC.iterdir() if p.name not in ("__pycache__", "__init__.py")}
    assert tops - {"__main__"} <= set(LAYERS), f"no layer for {sorted(tops - set(LAYERS) - {'__main__'})}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_flow_down(module: str) -> None:
    upward = sorted(t for t in GRAPH[module] if _layer(t) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports from higher layers: {upward}"


def test_no_import_circles() -> None:
    # Package __init__ files re-export their children: a child importing its own package's __init__ is normal
    # Python and not a design circle, so edges into a package's own __init__ from inside it are left out.
    def edges(m: str) -> set[str]:
        return {t for t in GRAPH[m] if t in GRAPH and not (m.startswith(t + ".") and t != "adaptune")}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
