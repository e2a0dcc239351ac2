"""Save and load adapters: ``adapter_config.json`` + ``adapter.safetensors`` (+ ``head.safetensors``).

``adapter_config.json`` records the adapter method (``"method"``, also inside ``"config"``); loading builds the
config through the method registry (``core.contract``), so every registered method saves and loads here.
Files written before the field existed are bottleneck adapters.
A saved folder records the library version and a fingerprint of the base (model type, block count,
widths, adapted modules); loading onto a different base fails with an error that lists what differs.
Saves are atomic: files are written to a temporary folder beside the target, then swapped in.
Loading never unpickles: weights are read with safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.config import MethodConfig
from ..core.contract import DEFAULT_METHOD, config_from_dict
from ..core.model import (
    DEFAULT_HEADS,
    adapter_config,
    adapter_modules,
    adapter_targets,
    adapter_to_fill,
    head_modules,
)
from ..core.placement import find_blocks, find_targets
from ..util import atomic_dir_write
from ..version import __version__
from .adapterhub import is_adapterhub_folder, load_adapterhub, load_adapterhub_head, save_adapterhub
from .names import CONFIG_FILE, HEAD_FILE, WEIGHTS_FILE
from .tensors import copy_checked_tensor, copy_head, module_tensors, read_tensors

__all__ = [
    "CONFIG_FILE",
    "HEAD_FILE",
    "WEIGHTS_FILE",
    "copy_checked_tensor",
    "copy_head",
    "fingerprint",
    "load_adapter",
    "module_tensors",
    "read_tensors",
    "save_adapter",
]

FORMAT = "adaptune.adapter/1"


def fingerprint(model: nn.Module, targets: list[str]) -> dict[str, Any]:
    """What a saved adapter needs of its base: model type, block count, widths and the adapted modules."""
    blocks = find_blocks(model)
    return {
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "model_class": type(model).__name__,
        "num_layers": len(blocks),
        "widths": sorted({b.width for b in blocks}),
        "targets": list(targets),
    }


def save_adapter(
    model: nn.Module,
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    heads: tuple[str, ...] | None = DEFAULT_HEADS,
    format: str = "adaptune",
) -> Path:
    """Save adapter ``name`` (and the task head, if present) to ``out_dir``.

    Args:
        model: the model holding the adapter.
        name: the adapter to save.
        out_dir: target folder (created; replaced atomically if it exists).
        heads: head module paths to save alongside (``None`` or ``()``: no head).
        format: ``"adaptune"`` or ``"adapterhub"`` (AdapterHub's layout, for the placements it has; no head).

    Returns:
        The folder path.
    """
    if format == "adapterhub":
        return save_adapterhub(model, name, out_dir)
    if format != "adaptune":
        raise ValueError(f"save_adapter format={format!r}: expected 'adaptune' or 'adapterhub'")
    out = Path(out_dir)
    config = adapter_config(model, name)
    tensors = module_tensors(adapter_modules(model, name))
    found_heads = head_modules(model, heads or ())
    head_tensors = module_tensors(found_heads)
    head_names = list(found_heads)
    meta = {
        "format": FORMAT,
        "adaptune_version": __version__,
        "name": name,
        "method": config.method,
        "config": config.to_dict(),
        "base": fingerprint(model, adapter_targets(model, name)),
        "heads": head_names,
    }
    files: dict[str, Any] = {
        WEIGHTS_FILE: lambda p: save_file(tensors, str(p), metadata={"format": "pt", "adapter": name}),
        CONFIG_FILE: lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"),
    }
    if head_tensors:
        files[HEAD_FILE] = lambda p: save_file(head_tensors, str(p), metadata={"format": "pt"})
    atomic_dir_write(out, files)
    return out


def _read_meta(folder: Path) -> dict[str, Any]:
    cfg = folder / CONFIG_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such adapter folder")
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg}: missing (an adapter folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{cfg}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg}: line {err.lineno} column {err.colno}: invalid JSON ({err.msg})") from None
    if not isinstance(meta, dict) or "config" not in meta or "base" not in meta:
        raise ValueError(f"{cfg}: not an adaptune adapter config (expected keys 'config' and 'base')")
    return meta


def _read_config(meta: dict[str, Any], cfg: Path) -> MethodConfig:
    """The saved config, read by the class its ``method`` names (absent: written before methods, a bottleneck)."""
    config = meta["config"]
    if not isinstance(config, dict):
        raise ValueError(f"{cfg}: field 'config' must be a JSON object, got {type(config).__name__}")
    method = meta.get("method", config.get("method", DEFAULT_METHOD))
    if config.get("method", method) != method:
        raise ValueError(f"{cfg}: field 'method' is {method!r} but 'config.method' is {config['method']!r}")
    return config_from_dict({**config, "method": method}, source=str(cfg))


def _check_base(
    model: nn.Module, config: MethodConfig, saved: dict[str, Any], source: Path, weightless: set[str] = frozenset()
) -> tuple[str, str]:
    """Refuse a different base; returns (saved prefix, model prefix) to map paths between head classes.

    An adapter trained in ``BertForSequenceClassification`` (paths ``bert.encoder...``) fits a ``BertModel``
    (paths ``encoder...``): same blocks, other wrapper. Saved places holding no tensors (``weightless``: an
    invertible adapter's inverse before an LM head) may be absent, so a language adapter trained on a causal LM
    runs in a classifier of the same base. Anything else that differs is an error.
    """
    # Compare the coarse facts first: they explain a mismatch better than a failed layer selection does.
    try:
        here = fingerprint(model, [])
    except ValueError as err:
        raise ValueError(f"{source}: this adapter does not fit the model: {err}") from None
    diffs = [
        f"{key}: saved {saved.get(key)!r}, model has {here[key]!r}"
        for key in ("model_type", "num_layers", "widths")
        if saved.get(key) != here[key]
    ]
    if diffs:
        raise ValueError(f"{source}: adapter was made for another base model — " + "; ".join(diffs))
    try:
        targets = [t.module for t in find_targets(model, config)]
    except ValueError as err:
        raise ValueError(f"{source}: this adapter does not fit the model: {err}") from None
    saved_targets = list(saved.get("targets", []))
    mapping = _prefix_mapping(saved_targets, targets)
    if mapping is None and weightless:
        mapping = _prefix_mapping([t for t in saved_targets if t not in weightless], targets)
    if mapping is None:
        missing = sorted(set(saved_targets) - set(targets))[:3]
        raise ValueError(
            f"{source}: adapter was made for another base model — it sits at modules {missing} that this model lacks"
        )
    return mapping


def _prefix_mapping(saved: list[str], here: list[str]) -> tuple[str, str] | None:
    """(old, new) such that ``new + s[len(old):]`` turns every saved path into the model's, else None."""
    if len(saved) != len(here) or not saved:
        return ("", "") if saved == here else None
    a, b = saved[0], here[0]
    tail = 0
    while tail < min(len(a), len(b)) and a[len(a) - 1 - tail] == b[len(b) - 1 - tail]:
        tail += 1
    old, new = a[: len(a) - tail], b[: len(b) - tail]
    if all(s.startswith(old) and new + s[len(old) :] == h for s, h in zip(saved, here, strict=True)):
        return old, new
    return None


def load_adapter(
    model: nn.Module,
    folder: str | os.PathLike[str],
    name: str | None = None,
    *,
    activate: bool = True,
    load_head: bool = True,
) -> str:
    """Load a saved adapter into ``model`` (in place); returns its name in the model.

    Args:
        model: a model of the same base the adapter was saved from.
        folder: a folder written by ``save_adapter``, or by AdapterHub's ``adapters`` (converted on load).
        name: the name to give it (default: the saved name).
        activate: make it the only active adapter.
        load_head: also load the saved task head, if any (shapes must match: same number of labels).

    Raises:
        FileNotFoundError: a file is missing. ValueError: bad JSON, a different base, wrong shapes or keys.
    """
    src = Path(folder)
    if is_adapterhub_folder(src):  # saved by AdapterHub's `adapters`: convert on the fly
        name = load_adapterhub(model, src, name, activate=activate)
        if load_head and (src / "head_config.json").is_file():
            load_adapterhub_head(model, src)
        return name
    meta = _read_meta(src)
    config = _read_config(meta, src / CONFIG_FILE)
    saved_name = meta.get("name")
    name = name or saved_name
    if not isinstance(name, str):
        raise ValueError(f"{src / CONFIG_FILE}: field 'name' missing; pass name=")
    stored = read_tensors(src / WEIGHTS_FILE)
    held = {k.rpartition("adapters.")[0].rstrip(".") for k in stored}  # places with tensors ("" = the model root)
    weightless = {t for t in meta["base"].get("targets", []) if t not in held}
    old_prefix, new_prefix = _check_base(model, config, meta["base"], src, weightless)
    tensors = {_swap_prefix(k, old_prefix, new_prefix): v for k, v in stored.items()}
    head_tensors = read_tensors(src / HEAD_FILE) if load_head and (src / HEAD_FILE).exists() else {}

    with adapter_to_fill(model, name, config, activate=activate):
        _copy_into(model, name, saved_name, tensors, src / WEIGHTS_FILE)
        if head_tensors:
            copy_head(model, head_tensors, src / HEAD_FILE)
    return name


def _swap_prefix(key: str, old: str, new: str) -> str:
    return new + key[len(old) :] if key.startswith(old) else key


def _copy_into(model: nn.Module, name: str, saved_name: str, tensors: dict[str, torch.Tensor], src: Path) -> None:
    expected: dict[str, torch.Tensor] = {}
    for path, module in adapter_modules(model, name).items():
        saved_path = path[: -len(name)] + saved_name
        for key, value in module.state_dict(keep_vars=True).items():
            expected[f"{saved_path}.{key}"] = value
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{src}: keys do not match the adapter's config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for key, target in expected.items():
            copy_checked_tensor(target, tensors[key], key, src)
