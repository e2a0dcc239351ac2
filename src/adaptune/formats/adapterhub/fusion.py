"""Read AdapterFusion layers and adapter setups saved by AdapterHub's ``adapters`` library.

A fusion folder (``save_adapter_fusion``, or the ``a,b`` sub-folder of ``save_adapter_setup``) holds
``adapter_fusion_config.json`` and ``pytorch_model_adapter_fusion.bin`` or ``adapter_fusion.safetensors``, with keys
like ``bert.encoder.layer.0.output.adapter_fusion_layer.a,b.query.weight``. Their "dynamic" and "static" presets
compute what adaptune's ``Fusion`` computes (formulas in ``tests/fixtures/adapterhub/README.md``); settings
that change the math (``temperature``, ``query_before_ln``, ``residual_before``, ...) are refused with the file
and field named. One reader, ``load_adapterhub_fusion``, serves both ``adaptune.load_fusion`` and
``load_adapterhub_setup``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.composition import Fuse, Stack, adapter_names
from ...core.model import adapter_config, list_adapters, set_active
from ...core.placement import find_targets
from ...methods.fusion import add_fusion, delete_fusion, fusion_modules
from ..names import HUB_CONFIG, HUB_FUSION_CONFIG, HUB_HEAD_CONFIG, HUB_SETUP
from ..tensors import copy_checked_tensor
from .adapter import hub_location, layer_of, load_adapterhub, load_adapterhub_head, read_hub_json, read_hub_weights

__all__ = ["is_adapterhub_fusion_folder", "load_adapterhub_fusion", "load_adapterhub_setup"]

# AdapterFusion settings and the only value adaptune reproduces exactly (both presets use these). Not listed, as
# they only matter while training: regularization, value_initialized, dropout_prob.
_FUSION_FIXED: dict[str, bool] = {
    "temperature": False,  # True: T starts at 50 and drops on every forward call (a quirk not copied)
    "query_before_ln": False,
    "residual_before": False,
    "value_before_softmax": True,
    "query": True,
    "key": True,
}
_FUSION_KEY = re.compile(r"^(.*)\.adapter_fusion_layer\.([^.]+)\.(.+)$")
_FUSION_PARAMS = {"query.weight", "query.bias", "key.weight", "key.bias", "value.weight"}


def is_adapterhub_fusion_folder(folder: str | Path) -> bool:
    """True for a folder written by AdapterHub's ``save_adapter_fusion`` (it holds ``adapter_fusion_config.json``)."""
    return (Path(folder) / HUB_FUSION_CONFIG).is_file()


def _fused_names(meta: dict[str, Any], cfg: Path) -> list[str]:
    """The fused adapters, in AdapterHub's order: ``adapter_names``, else the fusion ``name`` "a,b", else the
    folder name (AdapterHub names a fusion by its adapters joined with commas)."""
    names = meta.get("adapter_names")
    if names is None:
        joined = meta.get("name", cfg.parent.name)
        if not isinstance(joined, str):
            raise ValueError(f"{cfg}: field 'name' must be the fused adapters joined by ',', got {joined!r}")
        names = joined.split(",")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or len(names) < 2:
        raise ValueError(f"{cfg}: field 'adapter_names' must list two or more adapter names, got {names!r}")
    return names


def _fusion_settings(meta: dict[str, Any], cfg: Path) -> bool:
    """Check the fusion ``config`` block; returns ``static`` (no value projection)."""
    settings = meta.get("config")
    if not isinstance(settings, dict):
        raise ValueError(f"{cfg}: field 'config' missing or not an object")
    for key, ok in _FUSION_FIXED.items():
        if settings.get(key, ok) != ok:
            raise ValueError(
                f"{cfg}: field 'config.{key}' = {settings.get(key)!r} is not supported by adaptune (needs {ok!r})"
            )
    value = settings.get("value", True)
    if not isinstance(value, bool):
        raise ValueError(f"{cfg}: field 'config.value' must be true or false, got {value!r}")
    return not value


def _layer_places(model: nn.Module, fuse: Fuse) -> dict[tuple[int, str], nn.Module]:
    """(block index, "attention"/"ffn") -> this fusion's layer there, read from the fused adapters' targets."""
    targets = [t for a in fuse.children for t in find_targets(model, adapter_config(model, a))]
    place_of = {t.module: (t.layer, t.location) for t in targets}
    suffix = f".adapters.{fuse.name}"
    return {place_of[path[: -len(suffix)]]: layer for path, layer in fusion_modules(model, fuse.name).items()}


def _copy_fusion_weights(model: nn.Module, fuse: Fuse, hub_name: str, src: Path) -> None:
    """Fill every parameter of the fusion's layers from the AdapterHub weights file; nothing may stay unfilled."""
    tensors = read_hub_weights(src, "model_adapter_fusion")
    layers = _layer_places(model, fuse)
    filled: set[tuple[tuple[int, str], str]] = set()
    for key, value in tensors.items():
        match = _FUSION_KEY.match(key)
        if match is None or match.group(2) != hub_name:
            continue  # another fusion's weights: AdapterHub's own loader skips them too
        left, param = match.group(1), match.group(3)
        place = (layer_of(left), hub_location(left))
        if param not in _FUSION_PARAMS or place not in layers:
            raise ValueError(f"{src}: fusion weight {key} has no place in this model's {fuse.name!r} layers")
        try:
            target = layers[place].get_parameter(param)
        except AttributeError:  # value.weight of a static fusion (config value=false)
            raise ValueError(f"{src}: fusion weight {key} has no place: the config says value=false") from None
        with torch.no_grad():
            copy_checked_tensor(target, value, key, src)
        filled.add((place, param))
    wanted = {(place, n) for place, layer in layers.items() for n, _ in layer.named_parameters()}
    missing = sorted(wanted - filled)
    if missing:
        (layer, location), param = missing[0]
        raise ValueError(
            f"{src}: no weights for fusion {hub_name!r} at block {layer} ({location}) {param} "
            f"({len(missing)} missing; is this the fusion of {list(fuse.children)}?)"
        )


def load_adapterhub_fusion(
    model: nn.Module,
    folder: str | Path,
    name: str | None = None,
    *,
    activate: bool = True,
    load_head: bool = True,
) -> Fuse:
    """Load an AdapterFusion folder written by AdapterHub over adapters already in ``model``.

    Load the fused adapters first (``adaptune.load_adapter`` reads AdapterHub adapter folders) under the names
    AdapterHub used; the fusion's adapters come from ``adapter_names`` in ``adapter_fusion_config.json`` (else its
    ``name`` "a,b", else the folder name). All or nothing: on any failure the fusion layers are removed again.

    Args:
        model: the model holding the fused adapters.
        folder: the fusion folder.
        name: the fusion's name in adaptune (default ``fusion_<a>_<b>``; AdapterHub's "a,b" is not a valid name).
        activate: make the ``Fuse`` the active setup.
        load_head: also load a classification head saved beside the fusion (``head_config.json``), if any.

    Returns:
        The ``Fuse`` setup (pass it to ``set_active``).

    Raises:
        FileNotFoundError: the config or weights file is missing. ValueError: a bad field (named with its file),
        adapters not in the model, a setting adaptune cannot reproduce, or weights that do not fit.
    """
    src = Path(folder)
    cfg = src / HUB_FUSION_CONFIG
    meta = read_hub_json(cfg)
    names = _fused_names(meta, cfg)
    static = _fusion_settings(meta, cfg)
    missing = [n for n in names if n not in list_adapters(model)]
    if missing:
        hints = [str(src.parent / n) for n in missing if (src.parent / n).is_dir()]
        raise ValueError(
            f"{cfg}: fuses {names}, but {missing} are not in the model; load them first with "
            f"adaptune.load_adapter(model, <folder>)" + (f" (found beside it: {hints})" if hints else "")
        )
    fuse = add_fusion(model, names, name, static=static, activate=False)
    try:
        _copy_fusion_weights(model, fuse, str(meta.get("name", ",".join(names))), src)
    except Exception:
        delete_fusion(model, fuse.name)  # never leave a half-loaded fusion behind
        raise
    if load_head and (src / HUB_HEAD_CONFIG).is_file():
        load_adapterhub_head(model, src)
    if activate:
        set_active(model, fuse)
    return fuse


def _setup_from(node: Any, source: str) -> Any:
    """An adaptune composition from AdapterHub's ``adapter_setup.json`` tree."""
    kind = node.get("type") if isinstance(node, dict) else None
    children = node.get("children", []) if isinstance(node, dict) else []
    if kind == "single":
        return children[0]
    if kind == "Stack":
        return Stack(*[_setup_from(c, source) for c in children])
    if kind == "Fuse":
        names = [_setup_from(c, source) for c in children]
        return Fuse(*names, name="fusion_" + "_".join(names))
    raise ValueError(
        f"{source}: AdapterHub setup type {kind!r} is not supported (Stack, Fuse and single adapters are)"
    )


def _has_fuse(node: Any) -> bool:
    return isinstance(node, Fuse) or any(_has_fuse(c) for c in getattr(node, "children", ()) if not isinstance(c, str))


def _check_invertible_members(setup: Any, src: Path) -> None:
    """AdapterHub runs the invertible coupling of the setup's FIRST adapter only; adaptune runs every active one.
    They agree when no other adapter has one, and (untested) fusion is not involved: anything else is refused."""
    names = adapter_names(setup)
    configs = {n: read_hub_json(src / n / HUB_CONFIG).get("config") for n in names}
    with_inv = [n for n, c in configs.items() if isinstance(c, dict) and c.get("inv_adapter")]
    if with_inv and (with_inv != names[:1] or _has_fuse(setup)):
        raise ValueError(
            f"{src}: invertible adapters (inv_adapter) in {with_inv}: adaptune loads them in a setup only as its "
            f"first adapter ({names[0]!r}) and outside a Fuse (AdapterHub runs the first adapter's coupling alone)"
        )


def load_adapterhub_setup(model: nn.Module, folder: str | Path, *, activate: bool = True) -> Any:
    """Load a folder written by AdapterHub's ``save_adapter_setup`` (adapters, fusion layers) and activate it."""
    src = Path(folder)
    cfg = src / HUB_SETUP
    meta = read_hub_json(cfg)
    setup = _setup_from(meta.get("adapter_setup"), str(cfg))
    _check_invertible_members(setup, src)
    for name in adapter_names(setup):
        load_adapterhub(model, src / name, name=name, activate=False)
    fuses = [setup] if isinstance(setup, Fuse) else [c for c in getattr(setup, "children", ()) if isinstance(c, Fuse)]
    for fuse in fuses:
        # AdapterHub names a fusion folder by its adapters joined with commas
        load_adapterhub_fusion(model, src / ",".join(fuse.children), fuse.name, activate=False, load_head=False)
    if activate:
        set_active(model, setup)
    return setup
