"""Read AdapterHub Compacter and Compacter++ folders (bottleneck configs with ``phm_layer=True``).

AdapterHub's ``CompacterConfig`` is ``double_seq_bn`` with PHM projections (adaptune placement ``both``:
``LN(x + h + f(h))``), ``CompacterPlusPlusConfig`` is ``seq_bn`` with them (``ffn_post_ln``:
``LN(v + f(LN(v)))``, v = x + h), with ``f(z) = s · (act(z H_down + b_down) H_up + b_up)`` and
``H = Σ_i rule_i ⊗ W_i`` (``W_i = W_left_i W_right_i`` when factorised). Placement, activation, scaling and layers
are read as for plain bottlenecks (``bn_config.to_adaptune_config``).

Keys (after ``...adapters.<name>.``) map one to one onto ``methods.compacter.Compacter``:
``adapter_down.0.{W_left,W_right,W,b}`` -> ``down.*``, ``adapter_up.*`` -> ``up.*``; the rule tensor shared by the
whole adapter, ``<base>.shared_parameters.<name>.phm_rule`` (n, n, n), goes to the module that owns it in adaptune.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.model import adapter_modules, adapter_to_fill
from ...core.placement import find_blocks
from ...methods.compacter import CompacterConfig
from ..tensors import copy_checked_tensor
from .bn_config import hub_location, layer_of, to_adaptune_config

__all__ = ["load_hub_compacter", "to_compacter_config"]

# Compacter settings that must have these values: adaptune's Compacter has no adapter LayerNorms, one rule tensor
# per adapter (AdapterHub's unshared rule is one per PHM layer, down and up apart), unshared unfactorised rules and
# per-layer fast weights.
_FIXED: dict[str, Any] = {
    "ln_before": False,
    "ln_after": False,
    "shared_phm_rule": True,
    "factorized_phm_rule": False,
    "shared_W_phm": False,
}
_PARAM = re.compile(r"^(adapter_down\.0|adapter_up)\.(W_left|W_right|W|b)$")


def to_compacter_config(cfg: dict[str, Any], num_layers: int, source: str) -> CompacterConfig:
    """The CompacterConfig equivalent to an AdapterHub bottleneck config with ``phm_layer=True``.

    Raises:
        ValueError: a key/value adaptune cannot express (named in the message).
    """
    for key, value in _FIXED.items():
        if cfg.get(key, value) != value:
            raise ValueError(f"{source}: AdapterHub setting {key}={cfg.get(key)!r} is not supported by adaptune")
    if not isinstance(cfg.get("scaling", 1.0), float):  # "learned" / "channel": Compacter's scaling is a constant
        raise ValueError(f"{source}: AdapterHub setting scaling={cfg.get('scaling')!r} is not supported by adaptune")
    plain = to_adaptune_config({**cfg, "phm_layer": False}, num_layers, source)
    return CompacterConfig(
        placement=plain.placement,
        layers=plain.layers,
        reduction_factor=plain.reduction_factor,
        phm_dim=int(cfg.get("phm_dim", 4)),
        phm_rank=int(cfg.get("phm_rank", 1)),
        shared_phm_rule=True,
        factorized_phm_W=bool(cfg.get("factorized_phm_W", True)),
        phm_bias=bool(cfg.get("phm_bias", True)),
        activation=plain.activation,
        scaling=plain.scaling,
    )


def load_hub_compacter(
    model: nn.Module, src: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor], name: str, activate: bool
) -> str:
    """Attach the AdapterHub Compacter adapter in ``tensors`` (read from ``src``) to ``model`` as ``name``."""
    saved = meta.get("name", "adapter")
    config = to_compacter_config(meta["config"], len(find_blocks(model)), str(src / "adapter_config.json"))
    with adapter_to_fill(model, name, config, activate=activate) as targets:
        by_place = {(t.layer, t.location): f"{t.module}.adapters.{name}" for t in targets}
        modules = adapter_modules(model, name)
        state = {f"{p}.{k}": v for p, m in modules.items() for k, v in m.state_dict(keep_vars=True).items()}
        filled: set[str] = set()
        with torch.no_grad():
            for key, value in tensors.items():
                target = _target_of(key, saved, by_place, next(iter(modules)), src)
                if target is None:
                    continue
                copy_checked_tensor(state[target], value, key, src)
                filled.add(target)
        missing = sorted(set(state) - filled)
        if missing:
            raise ValueError(f"{src}: no weights for {missing[:3]} (is this the adapter named {saved!r}?)")
    return name


def _target_of(key: str, saved: str, by_place: dict[tuple[int, str], str], owner: str, src: Path) -> str | None:
    """Our state key for an AdapterHub Compacter key, None for another adapter's key."""
    if key.endswith(f"shared_parameters.{saved}.phm_rule"):
        return f"{owner}.phm_rule"  # the first module owns the adapter's rule tensor (methods.compacter.share)
    m = re.match(r"^(.*)\.adapters\.([^.]+)\.(.+)$", key)
    if m is None or m.group(2) != saved:
        return None
    left, param = m.group(1), _PARAM.match(m.group(3))
    place = (layer_of(left), hub_location(left))
    if param is None or place not in by_place:
        raise ValueError(f"{src}: weight {key} has no place in adaptune's Compacter layout")
    part = "down" if param.group(1) == "adapter_down.0" else "up"
    return f"{by_place[place]}.{part}.{param.group(2)}"
