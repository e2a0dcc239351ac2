"""Read AdapterHub LoRA and (IA)³ folders (``LoRAConfig`` / ``IA3Config``: ``architecture="lora"``).

AdapterHub wraps projections and keeps the weights at ``<projection>.loras.<name>.lora_A`` (r, in) / ``lora_B``
(out, r). Which projections (module names are the host's own, so they map one to one)::

    selfattn_lora + attn_matrices   query / key / value (BERT, LLaMA ``q_proj`` ...); GPT-2: the fused ``c_attn``
    intermediate_lora               BERT ``intermediate.dense``, GPT-2 ``mlp.c_fc``, LLaMA ``mlp.down_proj`` (sic)
    output_lora                     BERT ``output.dense``,       GPT-2 ``mlp.c_proj``, LLaMA ``mlp.up_proj`` (sic)

``composition_mode="add"`` (LoRA): ``h = W x + b + (alpha / r) · B A x``  ->  adaptune ``LoraConfig``.
``composition_mode="scale"`` ((IA)³, r = 1): ``h = (W x + b) ⊙ (alpha · lora_B)`` on each projection's OUTPUT
(keys, values and the intermediate projection's output, before the activation)  ->  ``IA3Config`` with explicit
``target_modules`` in output mode, vector = ``alpha · lora_B``.

GPT-2's fused ``c_attn`` holds one rank-r update per enabled matrix, stacked: ``lora_A`` (n·r, in), ``lora_B``
(n·d, r) applied group-wise (a grouped conv1d) and written into the q/k/v thirds of the output. adaptune adapts
``c_attn`` whole, so that is one block-diagonal LoRA of rank n·r (zeros elsewhere); other projections of the same
adapter are zero-padded to that rank and ``alpha`` is raised with it, keeping ``alpha / rank`` (and every output)
unchanged. For (IA)³ the disabled thirds get the factor ``alpha`` (AdapterHub pads them with 1, then scales).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.model import adapter_modules, adapter_to_fill
from ...core.placement import linear_dims
from ...methods.ia3 import IA3Config
from ...methods.lora import LoraConfig
from ..tensors import copy_checked_tensor

__all__ = ["load_hub_lora", "resolve_module"]

_KEY = re.compile(r"^(.*)\.loras\.([^.]+)\.(lora_A|lora_B)$")
_MATRICES = ("q", "k", "v")
# Settings that must have these values for the math above to hold (key -> expected).
_FIXED: dict[str, Any] = {"use_gating": False, "use_dora": False, "vera_d": None, "vera_b": None}


def _unsupported(source: str, cfg: dict[str, Any], key: str) -> ValueError:
    return ValueError(f"{source}: AdapterHub setting {key}={cfg.get(key)!r} is not supported by adaptune")


def check_lora_config(cfg: dict[str, Any], source: str) -> str:
    """``"add"`` or ``"scale"`` for an AdapterHub LoRA config adaptune can express; else ValueError naming the key."""
    if cfg.get("architecture") != "lora":
        raise _unsupported(source, cfg, "architecture")
    for key, value in _FIXED.items():
        if cfg.get(key, value) != value:
            raise _unsupported(source, cfg, key)
    mode = cfg.get("composition_mode", "add")
    if mode not in ("add", "scale"):
        raise _unsupported(source, cfg, "composition_mode")
    matrices = cfg.get("attn_matrices", ["q", "v"])
    if not isinstance(matrices, list) or not set(matrices) <= set(_MATRICES):
        raise _unsupported(source, cfg, "attn_matrices")
    r = cfg.get("r", 8)
    if not isinstance(r, int) or r < 1 or (mode == "scale" and r != 1):
        raise _unsupported(source, cfg, "r")
    if not isinstance(cfg.get("alpha", 8), (int, float)) or cfg.get("alpha", 8) <= 0:
        raise _unsupported(source, cfg, "alpha")
    if mode == "scale" and cfg.get("dropout", 0.0):
        raise _unsupported(source, cfg, "dropout")
    return mode


def resolve_module(model: nn.Module, hub_path: str, source: str) -> str:
    """The name in ``model`` of the module AdapterHub saved as ``hub_path`` (its AdapterModel adds a base prefix such
    as ``bert.`` or ``transformer.``; a task model may carry its own): an exact name, else a unique suffix match."""
    names = [n for n, _ in model.named_modules() if n]
    if hub_path in names:
        return hub_path
    tail = hub_path.split(".", 1)[1] if "." in hub_path else hub_path
    found = [n for n in names if n == tail or n.endswith("." + tail)]
    if len(found) != 1:
        what = "no module" if not found else f"{len(found)} modules ({found[:3]})"
        raise ValueError(f"{source}: weights for {hub_path}, but {type(model).__name__} has {what} named like {tail}")
    return found[0]


def _full_lora(
    a: torch.Tensor, b: torch.Tensor, out_width: int, enabled: list[str] | None, r: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (rank, in), B (out, rank)) equal to AdapterHub's update: zero-padded, fused groups made block-diagonal."""
    full_a = a.new_zeros(rank, a.shape[1])
    full_b = b.new_zeros(out_width, rank)
    if enabled is None:
        full_a[: a.shape[0]], full_b[:, : b.shape[1]] = a, b
        return full_a, full_b
    d = out_width // len(_MATRICES)  # one third of the fused q/k/v output
    for g, m in enumerate(enabled):
        third = _MATRICES.index(m)
        full_a[g * r : (g + 1) * r] = a[g * r : (g + 1) * r]
        full_b[third * d : (third + 1) * d, g * r : (g + 1) * r] = b[g * d : (g + 1) * d]
    return full_a, full_b


def _full_vector(b: torch.Tensor, out_width: int, enabled: list[str] | None, alpha: float) -> torch.Tensor:
    """The (IA)³ output factor ``alpha · lora_B``; in a fused projection the disabled thirds get ``alpha``."""
    vec = b.reshape(-1)
    if enabled is None:
        return vec * alpha
    d = out_width // len(_MATRICES)
    full = vec.new_ones(out_width)
    for g, m in enumerate(enabled):
        third = _MATRICES.index(m)
        full[third * d : (third + 1) * d] = vec[g * d : (g + 1) * d]
    return full * alpha


def load_hub_lora(
    model: nn.Module, src: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor], name: str, activate: bool
) -> str:
    """Attach the AdapterHub LoRA / (IA)³ adapter in ``tensors`` (read from ``src``) to ``model`` as ``name``."""
    cfg, saved = meta["config"], meta.get("name", "adapter")
    source = str(src / "adapter_config.json")
    mode = check_lora_config(cfg, source)
    r, alpha = int(cfg.get("r", 8)), float(cfg.get("alpha", 8))
    weights: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # our module -> lora_A/B -> (key, tensor)
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None or m.group(2) != saved:
            continue
        ours = resolve_module(model, m.group(1), str(src))
        weights.setdefault(ours, {})[m.group(3)] = (key, value)
    if not weights:
        raise ValueError(f"{src}: no '.loras.{saved}.' weights (is this the adapter named {saved!r}?)")
    need = ("lora_B",) if mode == "scale" else ("lora_A", "lora_B")
    for module, parts in weights.items():
        if any(p not in parts for p in need):
            raise ValueError(f"{src}: {module} has {sorted(parts)}, expected {list(need)}")
    # A fused q/k/v projection (GPT-2's c_attn) holds one r-block per enabled matrix, each writing a third of the
    # output: lora_A has n·r rows or lora_B fewer rows than the output (one matrix: r rows, but a third of it).
    enabled = [m for m in _MATRICES if m in cfg.get("attn_matrices", ["q", "v"])]
    fused: dict[str, list[str] | None] = {}
    for module, parts in weights.items():
        a_rows = parts["lora_A"][1].shape[0] if mode == "add" else r
        fused[module] = enabled if a_rows != r or parts["lora_B"][1].shape[0] != _out_width(model, module) else None
    rank = r * max(len(f) if f else 1 for f in fused.values())
    targets = tuple(sorted(weights))
    config: LoraConfig | IA3Config
    if mode == "add":
        dropout = float(cfg.get("dropout", 0.0) or 0.0)
        config = LoraConfig(rank=rank, alpha=alpha * rank / r, dropout=dropout, target_modules=targets)
    else:
        config = IA3Config(target_modules=targets, feedforward_modules=())
    with adapter_to_fill(model, name, config, activate=activate):
        modules = {path.rsplit(".adapters.", 1)[0]: mod for path, mod in adapter_modules(model, name).items()}
        with torch.no_grad():
            for module, parts in weights.items():
                ours = modules[module]
                b_key, b = parts["lora_B"]
                groups = len(fused[module] or [None])
                out = ours.out_width if fused[module] is None else ours.out_width // len(_MATRICES) * groups
                _check_shape(b_key, b, (out, r), src)
                if mode == "scale":
                    copy_checked_tensor(ours.vector, _full_vector(b, ours.out_width, fused[module], alpha), b_key, src)
                    continue
                a_key, a = parts["lora_A"]
                _check_shape(a_key, a, (groups * r, ours.in_width), src)
                full_a, full_b = _full_lora(a, b, ours.out_width, fused[module], r, rank)
                copy_checked_tensor(ours.A, full_a, a_key, src)
                copy_checked_tensor(ours.B, full_b, b_key, src)
    return name


def _check_shape(key: str, value: torch.Tensor, expected: tuple[int, int], src: Path) -> None:
    if tuple(value.shape) != expected:
        raise ValueError(f"{src}: tensor {key} has shape {tuple(value.shape)}, expected {expected} for this model")


def _out_width(model: nn.Module, module: str) -> int:
    dims = linear_dims(model.get_submodule(module))
    return dims[1] if dims else 0
