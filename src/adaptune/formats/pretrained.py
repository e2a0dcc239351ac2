"""Save and restore "base + adapters" in one folder.

``model.save_pretrained()`` on an adapted model writes the adapter tensors into the base checkpoint, and
``from_pretrained`` then drops them as UNEXPECTED keys: the outputs change without an error. ``save_pretrained``
here keeps the two apart::

    folder/
      config.json, model.safetensors, ...  the base (task head included) as Transformers writes it, WITHOUT adapter
                                           tensors: plain ``from_pretrained`` loads it with no unexpected keys
      adaptune/
        manifest.json                      format, version, adapter names, fusions (name + fused adapters),
                                           the active setup (``composition.to_dict``)
        adapters/<name>/                   every adapter, as ``save_adapter`` writes it (no head: it is in the base)
        fusions/<name>/                    every fusion, as ``save_fusion`` writes it

``load_pretrained`` rebuilds the model: ``from_pretrained`` on the base, then the adapters, the fusions and the
active setup. The save is atomic (readers see the old or the new folder); files it does not write, such as a
tokenizer saved into the same folder, are kept. Training state (which parameters train) is not saved: call
``train_adapter`` / ``train_fusion`` again to continue training.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.composition import Block, Fuse, Setup, from_dict, to_dict
from ..core.model import active_setup, adapter_slots, list_adapters, set_active
from ..methods.fusion import list_fusions
from ..util import atomic_dir_write, read_json_object, write_json_atomic
from ..version import __version__
from .fusion import load_fusion, save_fusion
from .native import load_adapter, save_adapter

__all__ = ["ADAPTUNE_DIR", "MANIFEST", "base_state_dict", "load_pretrained", "save_pretrained"]

ADAPTUNE_DIR = "adaptune"  # the sub-folder beside the base checkpoint that holds adapters, fusions and the setup
MANIFEST = "manifest.json"
FORMAT = "adaptune.pretrained/1"
# Weight files Transformers writes; a stale one left from an earlier save (e.g. old shards) would be read again.
_WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "*.bin.index.json")


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the adapter and fusion tensors (everything under an ``AdapterSlot``)."""
    prefixes = tuple(f"{host}.adapters." if host else "adapters." for host in adapter_slots(model))
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}


def _fuses_in(node: Setup) -> list[Fuse]:
    if isinstance(node, Fuse):
        return [node]
    if isinstance(node, Block):
        return [f for child in node.children for f in _fuses_in(child)]
    return []


def _fusions_to_save(model: nn.Module, setup: Setup, extra: tuple[Fuse, ...]) -> list[Fuse]:
    """Every fusion layer of the model with the adapters it fuses (known from a ``Fuse`` only)."""
    by_name: dict[str, Fuse] = {}
    for fuse in [*_fuses_in(setup), *extra]:
        by_name.setdefault(fuse.name, fuse)
    unknown = [n for n in list_fusions(model) if n not in by_name]
    if unknown:
        raise ValueError(
            f"fusions {unknown} are not in the active setup, so their adapters are unknown: pass "
            f"fusions=[adaptune.Fuse(<adapters>, name={unknown[0]!r})]"
        )
    return [by_name[n] for n in list_fusions(model)]


def _write_adaptune_dir(model: nn.Module, out: Path, fuses: list[Fuse], manifest: dict[str, Any]) -> None:
    for name in manifest["adapters"]:
        save_adapter(model, name, out / "adapters" / name, heads=None)
    for fuse in fuses:
        save_fusion(model, fuse, out / "fusions" / fuse.name, heads=None)
    write_json_atomic(out / MANIFEST, manifest)


def save_pretrained(
    model: nn.Module,
    folder: str | os.PathLike[str],
    *,
    fusions: tuple[Fuse, ...] | list[Fuse] = (),
    **save_kwargs: Any,
) -> Path:
    """Save the base model, every adapter and fusion, and the active setup to ``folder`` (layout above).

    Args:
        model: a Transformers ``PreTrainedModel`` with adaptune adapters.
        folder: the target folder (created; replaced atomically; files this save does not write are kept).
        fusions: ``Fuse`` setups of fusion layers that are not in the active setup (a fusion layer does not
            record which adapters it fuses).
        **save_kwargs: passed to ``model.save_pretrained`` (e.g. ``max_shard_size``); not ``state_dict``.

    Returns:
        The folder path.

    Raises:
        ValueError: a fusion layer whose adapters are unknown (pass it in ``fusions``).
    """
    if "state_dict" in save_kwargs:
        raise ValueError("save_pretrained: state_dict is chosen here (the base tensors only); do not pass it")
    out = Path(folder)
    setup = active_setup(model)
    fuses = _fusions_to_save(model, setup, tuple(fusions))
    manifest = {
        "format": FORMAT,
        "adaptune_version": __version__,
        "adapters": list_adapters(model),
        "fusions": [{"name": f.name, "adapters": list(f.children)} for f in fuses],
        "active_setup": to_dict(setup),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # Transformers picks its own file names (shards, index): write the base beside the target first, then move
    # its files into the folder that atomic_dir_write swaps in.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.base.", dir=out.parent))
    try:
        model.save_pretrained(staging, state_dict=base_state_dict(model), **save_kwargs)
        files: dict[str, Any] = {p.name: functools.partial(_move, p) for p in staging.iterdir()}
        stale = [p.name for p in out.iterdir()] if out.is_dir() else []
        for name in stale:
            if name not in files and any(fnmatch.fnmatch(name, pat) for pat in _WEIGHT_PATTERNS):
                files[name] = _drop  # named, not written: atomic_dir_write leaves it out of the new folder
        files[ADAPTUNE_DIR] = lambda p: _write_adaptune_dir(model, p, fuses, manifest)
        atomic_dir_write(out, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _move(src: Path, dst: Path) -> None:
    shutil.move(str(src), dst)


def _drop(_: Path) -> None:
    return None


def _model_class(folder: Path) -> Any:
    """The Transformers class named first in ``config.json``'s ``architectures``."""
    import transformers

    cfg = folder / "config.json"
    architectures = read_json_object(cfg).get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        raise ValueError(
            f"{cfg}: field 'architectures' = {architectures!r} names no Transformers class; pass model_class="
        )
    return cls


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest = read_json_object(path, "is this a folder written by adaptune.save_pretrained?")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' = {manifest.get('format')!r}, expected {FORMAT!r}")
    adapters, fusions = manifest.get("adapters"), manifest.get("fusions")
    if not isinstance(adapters, list) or not all(isinstance(a, str) for a in adapters):
        raise ValueError(f"{path}: field 'adapters' must be a list of adapter names, got {adapters!r}")
    named = isinstance(fusions, list) and all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in fusions)
    if not named:
        raise ValueError(f"{path}: field 'fusions' must be a list of {{'name': ..., 'adapters': [...]}}: {fusions!r}")
    try:
        manifest["active_setup"] = from_dict(manifest.get("active_setup"))
    except ValueError as err:
        raise ValueError(f"{path}: field 'active_setup': {err}") from None
    return manifest


def load_pretrained(
    folder: str | os.PathLike[str], model_class: Any = None, *, activate: bool = True, **from_pretrained_kwargs: Any
) -> nn.Module:
    """Rebuild a model saved by ``save_pretrained``: the base, its adapters, fusions and active setup.

    Args:
        folder: the saved folder.
        model_class: the Transformers class to load the base with (default: the first of ``architectures`` in
            ``config.json``, e.g. ``BertForSequenceClassification``).
        activate: restore the saved active setup (else nothing is active).
        **from_pretrained_kwargs: passed to ``model_class.from_pretrained`` (e.g. ``dtype``, ``device_map``).

    Returns:
        The model, in the mode ``from_pretrained`` leaves it (eval).

    Raises:
        FileNotFoundError: not a folder written by ``save_pretrained``. ValueError: a bad manifest field (named).
    """
    src = Path(folder)
    manifest = _read_manifest(src / ADAPTUNE_DIR / MANIFEST)
    cls = model_class or _model_class(src)
    model = cls.from_pretrained(src, **from_pretrained_kwargs)
    for name in manifest["adapters"]:
        load_adapter(model, src / ADAPTUNE_DIR / "adapters" / name, name=name, activate=False, load_head=False)
    for fusion in manifest["fusions"]:
        load_fusion(model, src / ADAPTUNE_DIR / "fusions" / fusion["name"], activate=False)
    if activate:
        set_active(model, manifest["active_setup"])
    return model
