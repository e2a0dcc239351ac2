"""AdapterFusion and adapter averaging: create, train, save and load fusion layers over trained adapters.

A fusion layer sits in every slot that holds at least one of the fused adapters, under the fusion's name
(``<host>.adapters.<fusion>.query.weight`` ...). ``train_fusion`` freezes everything but the fusion layers and
the task head. The value regulariser ``λ·Σ||W_v - I||²`` is added to ``outputs.loss`` by a forward hook on
the model while it trains, so the plain HF ``Trainer`` and any custom loop that uses ``outputs.loss``
optimise it on the same step; ``fusion_value_loss`` gives the same term for loops that build their own loss.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .composition import Fuse
from .io import (
    _atomic_dir_write,
    _copy_head,
    _copy_tensor,
    _read_tensors,
    fingerprint,
    load_adapter,
    module_tensors,
    save_adapter,
)
from .model import (
    DEFAULT_HEADS,
    ParamSummary,
    _slots,
    adapter_config,
    adapter_modules,
    add_adapter,
    delete_adapter,
    head_modules,
    list_adapters,
    set_active,
    trainable_summary,
)
from .modules import Bottleneck, Fusion

__all__ = [
    "add_fusion",
    "average_adapters",
    "delete_fusion",
    "fusion_modules",
    "fusion_value_loss",
    "list_fusions",
    "load_fusion",
    "save_fusion",
    "train_fusion",
]

FUSION_CONFIG = "fusion_config.json"
FUSION_WEIGHTS = "fusion.safetensors"


def list_fusions(model: nn.Module) -> list[str]:
    """Names of the fusion layers in ``model``."""
    names: dict[str, None] = {}
    for slot in _slots(model).values():
        names.update(dict.fromkeys(n for n, m in slot.items() if isinstance(m, Fusion)))
    return list(names)


def fusion_modules(model: nn.Module, name: str) -> dict[str, Fusion]:
    """Full module path -> Fusion layer, for one fusion."""
    found = {
        f"{host}.adapters.{name}": s[name]
        for host, s in _slots(model).items()
        if isinstance(s._modules.get(name), Fusion)
    }
    if not found:
        raise KeyError(f"no fusion named {name!r}; fusions: {list_fusions(model)}")
    return found


def add_fusion(
    model: nn.Module,
    adapters: list[str],
    name: str | None = None,
    *,
    temperature: float = 1.0,
    static: bool = False,
    activate: bool = True,
) -> Fuse:
    """Add a fusion layer over trained ``adapters`` wherever any of them sits; returns the ``Fuse`` setup.

    Args:
        model: the model holding the adapters.
        adapters: two or more adapter names.
        name: the fusion's name (default ``fusion_<a>_<b>...``).
        temperature: softmax temperature, a constant saved with the fusion.
        static: no value projection (attention over the raw adapter outputs).
        activate: make ``Fuse(*adapters)`` the active setup.
    """
    known = list_adapters(model)
    missing = [a for a in adapters if a not in known]
    if missing or len(adapters) < 2:
        raise ValueError(f"add_fusion needs >= 2 adapters of the model; unknown {missing}, adapters: {known}")
    fuse = Fuse(*adapters, name=name)
    if fuse.name in known or fuse.name in list_fusions(model):
        raise ValueError(f"a fusion or adapter named {fuse.name!r} already exists")
    for slot in _slots(model).values():
        present = [a for a in adapters if isinstance(slot._modules.get(a), Bottleneck)]
        if present:
            ref = slot[present[0]]
            layer = Fusion(ref.width, temperature, static).to(ref.down.weight.device, ref.down.weight.dtype)
            slot[fuse.name] = layer.train(slot.training)
    if activate:
        set_active(model, fuse)
    return fuse


def delete_fusion(model: nn.Module, name: str) -> None:
    """Remove a fusion layer (the adapters stay) and its regulariser hook."""
    modules = fusion_modules(model, name)
    for module in modules.values():
        for handle in getattr(module, "_reg_handles", []):
            handle.remove()
    for slot in _slots(model).values():
        if name in slot:
            del slot[name]
        if isinstance(slot.active, Fuse) and slot.active.name == name:
            slot.active = None


def fusion_value_loss(model: nn.Module, name: str) -> torch.Tensor:
    """Σ over the fusion's layers of ||W_v - I||² (add λ times this to a custom loss)."""
    return torch.stack([m.value_distance() for m in fusion_modules(model, name).values()]).sum()


def _regularise(layers: list[Fusion], weight: float, module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
    # Added only while training and only where the host computed a loss (labels given).
    if not module.training or weight == 0:
        return None

    def term() -> torch.Tensor:  # computed only when there is a loss to add it to
        return weight * torch.stack([m.value_distance() for m in layers]).sum()

    if hasattr(output, "loss") and output.loss is not None:
        output.loss = output.loss + term()
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor) and output[0].dim() == 0:
        return (output[0] + term(), *output[1:])
    return None


def train_fusion(
    model: nn.Module, fuse: Fuse, heads: tuple[str, ...] = DEFAULT_HEADS, regularization: float = 0.01
) -> ParamSummary:
    """Freeze everything but the fusion layers of ``fuse`` and the task head; activate ``fuse``.

    Args:
        model: the model.
        fuse: the setup ``add_fusion`` returned.
        heads: task-head module paths that train too.
        regularization: λ of the value regulariser added to ``outputs.loss`` while training (0: none).
    """
    set_active(model, fuse)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = list(fusion_modules(model, fuse.name).values())
    for layer in layers:
        layer.requires_grad_(True)
        for handle in getattr(layer, "_reg_handles", []):
            handle.remove()
        layer._reg_handles = []
    for head in head_modules(model, heads).values():
        head.requires_grad_(True)
    if regularization and any(layer.value is not None for layer in layers):
        hook = functools.partial(_regularise, layers, float(regularization))
        layers[0]._reg_handles = [model.register_forward_hook(hook, with_kwargs=True)]
    return trainable_summary(model)


def save_fusion(
    model: nn.Module, fuse: Fuse, out_dir: str | os.PathLike[str], *, heads: tuple[str, ...] | None = DEFAULT_HEADS
) -> Path:
    """Save a fusion with the adapters it fuses: ``fusion_config.json``, ``fusion.safetensors``, one
    sub-folder per adapter and the task head."""
    out = Path(out_dir)
    layers = fusion_modules(model, fuse.name)
    first = next(iter(layers.values()))
    tensors = module_tensors(layers)
    head_tensors = module_tensors(head_modules(model, heads or ()))
    meta = {
        "format": "adaptune.fusion/1",
        "adaptune_version": __version__,
        "name": fuse.name,
        "adapters": list(fuse.children),
        "temperature": float(first.temperature),
        "static": first.value is None,
        "base": fingerprint(model, list(layers)),
    }
    files: dict[str, Any] = {
        FUSION_WEIGHTS: lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
        FUSION_CONFIG: lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"),
    }
    if head_tensors:
        files["head.safetensors"] = lambda p: save_file(head_tensors, str(p), metadata={"format": "pt"})
    for child in fuse.children:
        files[child] = functools.partial(lambda c, p: save_adapter(model, c, p, heads=None), child)
    _atomic_dir_write(out, files)
    return out


def load_fusion(model: nn.Module, folder: str | os.PathLike[str], *, activate: bool = True) -> Fuse:
    """Load a fusion saved by ``save_fusion`` (its adapters too, unless already in the model)."""
    src = Path(folder)
    cfg = src / FUSION_CONFIG
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg}: missing (a fusion folder holds {FUSION_CONFIG} and {FUSION_WEIGHTS})")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
        children, name = list(meta["adapters"]), meta["name"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{cfg}: not a valid fusion config ({err})") from None
    loaded: list[str] = []  # adapters this call adds: removed again if anything below fails
    fuse = None
    try:
        for child in children:
            if child not in list_adapters(model):
                load_adapter(model, src / child, name=child, activate=False, load_head=False)
                loaded.append(child)
        fuse = add_fusion(
            model, children, name, temperature=meta.get("temperature", 1.0), static=meta.get("static", False),
            activate=False,
        )  # fmt: skip
        tensors = _read_tensors(src / FUSION_WEIGHTS)
        state = {
            f"{p}.{k}": v
            for p, m in fusion_modules(model, name).items()
            for k, v in m.state_dict(keep_vars=True).items()
        }
        if set(state) != set(tensors):
            raise ValueError(f"{src / FUSION_WEIGHTS}: keys do not match the fusion's layers in this model")
        with torch.no_grad():
            for key, value in tensors.items():
                _copy_tensor(state[key], value, key, src / FUSION_WEIGHTS)
    except Exception:
        # All or nothing: never leave a half-loaded fusion or its freshly loaded adapters behind.
        if fuse is not None:
            delete_fusion(model, name)
        for child in loaded:
            delete_adapter(model, child)
        raise
    if (src / "head.safetensors").is_file():
        _copy_head(model, _read_tensors(src / "head.safetensors"), src / "head.safetensors")
    if activate:
        set_active(model, fuse)
    return fuse


def average_adapters(model: nn.Module, names: list[str], new_name: str, weights: list[float] | None = None) -> None:
    """A new adapter whose parameters are the weighted mean of ``names``' parameters (weights sum to 1).

    The adapters must share a config (up to init) and places; the result is a plain adapter, not a setup.
    """
    w = [1.0] * len(names) if weights is None else [float(x) for x in weights]
    if len(w) != len(names) or len(names) < 2 or any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError("average_adapters needs >= 2 adapters and one non-negative weight each (not all zero)")
    w = [x / sum(w) for x in w]
    configs = [adapter_config(model, n) for n in names]
    shapes = [
        {k: tuple(v.shape) for p, m in adapter_modules(model, n).items() for k, v in m.state_dict().items()}
        for n in names
    ]
    if any(s != shapes[0] for s in shapes[1:]) or any(c.placement != configs[0].placement for c in configs):
        raise ValueError(f"average_adapters: {names} differ in shape or placement; only like adapters can be averaged")
    add_adapter(model, new_name, configs[0], activate=False)
    sources = [adapter_modules(model, n) for n in names]
    with torch.no_grad():
        for path, target in adapter_modules(model, new_name).items():
            base = path[: -len(new_name)]
            for key, value in target.state_dict(keep_vars=True).items():
                mix = sum(
                    wi * src[base + n].state_dict()[key].float() for wi, src, n in zip(w, sources, names, strict=True)
                )
                value.copy_(mix.to(value.dtype))
