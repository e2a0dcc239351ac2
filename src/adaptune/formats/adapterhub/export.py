"""Write an adaptune adapter in AdapterHub's format, so the ``adapters`` library (Transformers 4.x) can load it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ...core.model import adapter_config, adapter_modules, adapter_targets
from ...core.placement import find_blocks
from ...methods.bottleneck import AdapterConfig
from ...util import atomic_dir_write
from ..names import HUB_CONFIG
from .adapter import layer_of

__all__ = ["save_adapterhub"]


_KINDS = {  # adaptune placement -> AdapterHub's switches for it
    "ffn_post_ln": {"mh_adapter": False, "output_adapter": True, "original_ln_before": True, "is_parallel": False},
    "both": {"mh_adapter": True, "output_adapter": True, "original_ln_before": False, "is_parallel": False},
    "parallel": {"mh_adapter": False, "output_adapter": True, "original_ln_before": False, "is_parallel": True},
}


def save_adapterhub(model: nn.Module, name: str, out_dir: str | Path) -> Path:
    """Write adapter ``name`` in AdapterHub's format (``adapter_config.json`` + ``adapter.safetensors``; AdapterHub
    reads it with ``model.load_adapter(folder, use_safetensors=True)``).

    Exportable: ``ffn_post_ln`` (→ ``seq_bn``), ``both`` (→ ``double_seq_bn``) and ``parallel`` (→ ``par_bn``) adapters
    without a gate, on the BERT family. Anything else raises ``ValueError`` naming what cannot be expressed.
    """
    cfg = _exportable_config(model, name)
    blocks = find_blocks(model)
    width = blocks[0].width
    modules = adapter_modules(model, name)
    size = next(iter(modules.values())).size
    if width / size != int(width / size) and cfg.bottleneck_size is not None:
        raise ValueError(f"adapter {name!r}: bottleneck {size} is not width / an integer reduction factor")
    used = {layer_of(p) for p in adapter_targets(model, name)}
    meta = {
        "config": _hub_config(cfg, width // size, [b.index for b in blocks if b.index not in used]),
        "hidden_size": width,
        "model_class": type(model).__name__,
        "model_name": None,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "name": name,
        "version": "adapters.1.3.0",
    }
    tensors = _hub_tensors(model, name, cfg, modules)
    out = Path(out_dir)
    atomic_dir_write(
        out,
        {
            "adapter.safetensors": lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
            HUB_CONFIG: lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"),
        },
    )
    return out


def _exportable_config(model: nn.Module, name: str) -> AdapterConfig:
    """The adapter's config, or a ValueError naming what AdapterHub cannot express."""
    cfg = adapter_config(model, name)
    if not isinstance(cfg, AdapterConfig):
        raise ValueError(f"adapter {name!r}: method {cfg.method!r} has no AdapterHub export (bottleneck only)")
    if cfg.gate or cfg.target_modules:
        raise ValueError(f"adapter {name!r}: gate / target_modules have no AdapterHub equivalent")
    if cfg.placement not in _KINDS:
        raise ValueError(
            f"adapter {name!r}: placement {cfg.placement!r} has no AdapterHub equivalent ({sorted(_KINDS)})"
        )
    return cfg


def _hub_config(cfg: AdapterConfig, reduction_factor: int, leave_out: list[int]) -> dict[str, object]:
    """AdapterHub's bottleneck config dict for ``cfg``."""
    act = {"identity": "linear", "gelu_tanh": "gelu_new", "silu": "swish"}.get(cfg.activation, cfg.activation)
    return {
        **_KINDS[cfg.placement],
        "reduction_factor": reduction_factor,
        "non_linearity": act,
        "original_ln_after": True,
        "ln_before": cfg.layer_norm_before,
        "ln_after": cfg.layer_norm_after,
        "init_weights": "bert",
        "scaling": "learned" if cfg.learn_scaling else float(cfg.scaling),
        "use_gating": False,
        "residual_before_ln": True,
        "adapter_residual_before_ln": False,
        "dropout": cfg.dropout,
        "leave_out": leave_out,
        "phm_layer": False,
        "inv_adapter": None,
        "cross_adapter": False,
        "stochastic_depth": 0.0,
    }


def _hub_tensors(
    model: nn.Module, name: str, cfg: AdapterConfig, modules: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """The adapter's tensors under AdapterHub's key names."""
    prefix = getattr(model, "base_model_prefix", "")
    tensors: dict[str, torch.Tensor] = {}
    for path, module in modules.items():
        host = path[: -len(f".adapters.{name}")]
        location = host.rsplit(".", 1)[0]  # AdapterHub keeps adapters on the sublayer's output module
        if prefix and not location.startswith(prefix + "."):
            location = f"{prefix}.{location}"
        base = f"{location}.adapters.{name}"
        state = module.state_dict()
        down = 1 if cfg.layer_norm_before else 0
        tensors[f"{base}.adapter_down.{down}.weight"] = state["down.weight"]
        tensors[f"{base}.adapter_down.{down}.bias"] = state["down.bias"]
        tensors[f"{base}.adapter_up.weight"] = state["up.weight"]
        tensors[f"{base}.adapter_up.bias"] = state["up.bias"]
        if cfg.layer_norm_before:
            for k in ("weight", "bias"):
                tensors[f"{base}.adapter_down.0.{k}"] = state[f"norm_before.{k}"]
                tensors[f"{base}.adapter_norm_before.{k}"] = state[f"norm_before.{k}"]
        if cfg.layer_norm_after:
            for k in ("weight", "bias"):
                tensors[f"{base}.adapter_norm_after.{k}"] = state[f"norm_after.{k}"]
        if cfg.learn_scaling:
            tensors[f"{base}.scaling"] = state["scale"].reshape(1)
    # clone: the ln_before weights are written under two names, and safetensors refuses shared storage
    return {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
