"""Save and load AdapterFusion: ``fusion_config.json`` + ``fusion.safetensors``, one sub-folder per fused adapter
and the task head. Loading is all or nothing: on any failure the fusion and the adapters this call loaded are
removed again. ``load_fusion`` also reads AdapterHub fusion folders (``formats.adapterhub.fusion``)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.composition import Fuse
from ..core.model import DEFAULT_HEADS, delete_adapter, head_modules, list_adapters, set_active
from ..methods.fusion import add_fusion, delete_fusion, fusion_modules
from ..util import atomic_dir_write
from ..version import __version__
from .adapterhub import is_adapterhub_fusion_folder, load_adapterhub_fusion
from .names import FUSION_CONFIG, FUSION_WEIGHTS, HEAD_FILE, HUB_FUSION_CONFIG
from .native import fingerprint, load_adapter, save_adapter
from .tensors import copy_checked_tensor, copy_head, module_tensors, read_tensors

__all__ = ["FUSION_CONFIG", "FUSION_WEIGHTS", "load_fusion", "save_fusion"]


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
        files[HEAD_FILE] = lambda p: save_file(head_tensors, str(p), metadata={"format": "pt"})
    for child in fuse.children:
        files[child] = functools.partial(lambda c, p: save_adapter(model, c, p, heads=None), child)
    atomic_dir_write(out, files)
    return out


def load_fusion(
    model: nn.Module, folder: str | os.PathLike[str], *, activate: bool = True, load_head: bool = True
) -> Fuse:
    """Load a fusion saved by ``save_fusion`` (its adapters too, unless already in the model), or by AdapterHub's
    ``save_adapter_fusion`` (``adapter_fusion_config.json``; load the fused adapters first with ``load_adapter``).

    Args:
        model: the model to add the fusion to.
        folder: the fusion folder.
        activate: make the returned ``Fuse`` the active setup.
        load_head: also copy the saved task head into ``model`` (a server that keeps one head per adapter reads
            it itself).

    Returns:
        The ``Fuse`` setup.

    Raises:
        FileNotFoundError: a file is missing. ValueError: a bad config field, adapters or weights that do not fit.
    """
    src = Path(folder)
    cfg = src / FUSION_CONFIG
    if not cfg.is_file() and is_adapterhub_fusion_folder(src):
        return load_adapterhub_fusion(model, src, activate=activate, load_head=load_head)
    if not cfg.is_file():
        raise FileNotFoundError(
            f"{cfg}: missing (an adaptune fusion folder holds {FUSION_CONFIG} and {FUSION_WEIGHTS}; an AdapterHub "
            f"one holds {HUB_FUSION_CONFIG})"
        )
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
            model,
            children,
            name,
            temperature=meta.get("temperature", 1.0),
            static=meta.get("static", False),
            activate=False,
        )
        _copy_fusion_weights(model, name, src / FUSION_WEIGHTS)
    except Exception:
        # All or nothing: never leave a half-loaded fusion or its freshly loaded adapters behind.
        if fuse is not None:
            delete_fusion(model, name)
        for child in loaded:
            delete_adapter(model, child)
        raise
    if load_head and (src / HEAD_FILE).is_file():
        copy_head(model, read_tensors(src / HEAD_FILE), src / HEAD_FILE)
    if activate:
        set_active(model, fuse)
    return fuse


def _copy_fusion_weights(model: nn.Module, name: str, path: Path) -> None:
    """Copy the saved fusion tensors into the fusion's layers; the key sets must match exactly."""
    tensors = read_tensors(path)
    state = {
        f"{p}.{k}": v for p, m in fusion_modules(model, name).items() for k, v in m.state_dict(keep_vars=True).items()
    }
    if set(state) != set(tensors):
        raise ValueError(f"{path}: keys do not match the fusion's layers in this model")
    with torch.no_grad():
        for key, value in tensors.items():
            copy_checked_tensor(state[key], value, key, path)
