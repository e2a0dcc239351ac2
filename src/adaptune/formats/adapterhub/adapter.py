"""Read single adapters and heads saved by AdapterHub's ``adapters`` library (which does not run on Transformers 5).

Their bottleneck configs map onto adaptune placements (formulas in ``tests/fixtures/adapterhub/README.md``):

| AdapterHub              | adaptune                                  | math (BERT family; v = x + h)   |
|-------------------------|-------------------------------------------|----------------------------------|
| ``seq_bn`` (pfeiffer)   | ``ffn_post_ln``                           | LN(v + f(LN(v)))                 |
| ``double_seq_bn``       | ``both`` (output of each sublayer's dense)| LN(x + h + f(h))                 |
| ``par_bn``              | ``parallel``, scaling 4                   | LN(x + h + 4 f(x))               |
| ``scaled_par_bn``       | ``parallel`` with a learned scalar        |                                  |

A bottleneck config with ``inv_adapter="nice"`` (MAD-X language adapters: ``seq_bn_inv``, ``double_seq_bn_inv``)
loads as one ``MixConfig(parts=(<the bottleneck above>, InvertibleConfig(...)))``: the bottleneck weights go to
``parts.0``, AdapterHub's ``<base>.invertible_adapters.<name>.{F,G}.*`` to ``parts.1`` at the embeddings, on the model
types where AdapterHub's coupling reads what adaptune's does (``INVERTIBLE_MODEL_TYPES``).

Other AdapterHub methods load through the same ``load_adapterhub``, by the config's ``architecture``: ``lora``
(LoRA and (IA)³, ``lora.py``), ``prefix_tuning`` (``prefix.py``), and bottlenecks with ``phm_layer`` (Compacter,
Compacter++: ``compacter.py``).

Weights are read from ``adapter.safetensors`` or ``pytorch_adapter.bin`` (``torch.load(weights_only=True)``: never
code). A setting adaptune cannot express raises ``ValueError`` naming the key and value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.model import adapter_modules, adapter_to_fill
from ...core.placement import Target, find_blocks
from ...methods.bottleneck import AdapterConfig
from ...methods.mix import MixConfig
from ...util import read_json_object
from ..names import HUB_CONFIG, HUB_HEAD_CONFIG
from ..tensors import copy_checked_tensor
from .bn_config import hub_location, invertible_config, layer_of, to_adaptune_config
from .compacter import load_hub_compacter
from .lora import load_hub_lora
from .prefix import load_hub_prefix

__all__ = [
    "INVERTIBLE_MODEL_TYPES",
    "hub_location",
    "is_adapterhub_folder",
    "layer_of",
    "load_adapterhub",
    "load_adapterhub_head",
    "read_hub_json",
    "read_hub_weights",
    "to_adaptune_config",
]


def is_adapterhub_folder(folder: str | Path) -> bool:
    """True for a folder written by AdapterHub's ``save_adapter`` (not by adaptune)."""
    cfg = Path(folder) / HUB_CONFIG
    if not cfg.is_file():
        return False
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and "format" not in meta and isinstance(meta.get("config"), dict)


def read_hub_json(path: Path) -> dict[str, Any]:
    """An AdapterHub JSON file as a dict; a missing file, bad JSON or a non-object raise naming ``path``."""
    return read_json_object(path)


# weights file stem -> (safetensors name, pickle name), as AdapterHub's save_* functions write them
_WEIGHT_FILES = {
    "adapter": ("adapter.safetensors", "pytorch_adapter.bin"),
    "model_head": ("model_head.safetensors", "pytorch_model_head.bin"),
    "model_adapter_fusion": ("adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin"),
}


def read_hub_weights(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    """The tensors of an AdapterHub weights file (``stem`` is a key of ``_WEIGHT_FILES``); never unpickles code."""
    st_name, pt_name = _WEIGHT_FILES[stem]
    st, pt = folder / st_name, folder / pt_name
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{st}: not a readable safetensors file ({err})") from None
    if pt.is_file():
        try:
            data = torch.load(pt, map_location="cpu", weights_only=True)  # refuses anything but tensors/containers
        except Exception as err:
            raise ValueError(f"{pt}: not a plain tensor file, refused ({type(err).__name__}: {err})") from None
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise ValueError(f"{pt}: expected a dict of tensors")
        return data
    raise FileNotFoundError(f"{folder}: no {st.name} or {pt.name}")


_PARAM = {
    "adapter_up.weight": "up.weight",
    "adapter_up.bias": "up.bias",
    "scaling": "scale",
    "adapter_norm_after.weight": "norm_after.weight",
    "adapter_norm_after.bias": "norm_after.bias",
}


def _split_key(key: str) -> tuple[int, str, str, str] | None:
    """(layer, location, adapter name, parameter) of an AdapterHub adapter key, or None."""
    m = re.match(r"^(.*)\.adapters\.([^.]+)\.(.+)$", key)
    if m is None:
        return None
    left, name, param = m.groups()
    layer = layer_of(left)
    return None if layer < 0 else (layer, hub_location(left), name, param)


def _param_name(param: str, ln_before: bool) -> str | None:
    if param.startswith("adapter_down."):
        index, rest = param.split(".")[1], param.split(".", 2)[2]
        if ln_before:
            return {"0": "norm_before", "1": "down"}.get(index, "?") + "." + rest
        return "down." + rest if index == "0" else None
    if param.startswith("adapter_norm_before."):
        return None  # a second copy of adapter_down.0 (the LayerNorm) when ln_before is set
    return _PARAM.get(param, "?")


# Model types whose AdapterHub invertible adapter reads what adaptune's reads (core.placement.embedding_targets): the
# output of the ``embeddings`` container (BERT family) or of ``embed_tokens`` (LLaMA). Each has a fixture.
INVERTIBLE_MODEL_TYPES = ("albert", "bert", "deberta-v2", "distilbert", "electra", "llama", "roberta", "xlm-roberta")
_INVERTIBLE_ELSEWHERE = {
    "gpt2": "AdapterHub runs GPT-2's coupling after adding the position embeddings (a hook on `drop`), adaptune on "
    "`wte`'s output, before them",
}
_INV_KEY = re.compile(r"^(?:.*\.)?invertible_adapters\.([^.]+)\.([FG]\.[02]\.(?:weight|bias))$")


def _check_invertible_model(model: nn.Module, source: Path) -> None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in INVERTIBLE_MODEL_TYPES:
        return
    why = _INVERTIBLE_ELSEWHERE.get(str(model_type), "its placement has not been checked against AdapterHub")
    raise ValueError(
        f"{source}: AdapterHub invertible adapters (inv_adapter) load on model types "
        f"{', '.join(INVERTIBLE_MODEL_TYPES)}; not on {model_type!r}: {why}"
    )


def _check_inverse_place(model: nn.Module, targets: list[Target], source: Path) -> None:
    """AdapterHub inverts the coupling right before the output embeddings (the vocabulary projection, after any
    head transform); so does adaptune's placement (``core.placement.embedding_targets``). A guard: a model whose
    inverse would land elsewhere is refused rather than loaded with other logits."""
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    names = {id(m): n for n, m in model.named_modules()}
    for t in targets:
        if t.layer < 0 and t.mode == "input" and (out is None or names.get(id(out)) != t.module):
            raise ValueError(
                f"{source}: AdapterHub inverts an invertible adapter at the input of {names.get(id(out))!r} (the "
                f"output embeddings), adaptune at the input of the LM head {t.module!r}: the logits would differ; "
                "load it into the base model or a classifier instead"
            )


def load_adapterhub(model: nn.Module, folder: str | Path, name: str | None = None, *, activate: bool = True) -> str:
    """Load an AdapterHub adapter folder into ``model``; returns the adapter's name in the model."""
    src = Path(folder)
    meta = read_hub_json(src / HUB_CONFIG)
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{src / HUB_CONFIG}: field 'config' missing or not an object")
    saved = meta.get("name", "adapter")
    name = name or saved
    blocks = find_blocks(model)
    hidden = meta.get("hidden_size")
    if hidden is not None and hidden not in {b.width for b in blocks}:
        raise ValueError(f"{src}: adapter is for hidden size {hidden}, the model's blocks are {blocks[0].width} wide")
    other = _other_method(meta["config"])
    if other is not None:  # LoRA / (IA)³, prefix tuning, Compacter: their own modules
        return other(model, src, meta, read_hub_weights(src, "adapter"), name, activate)
    inv = invertible_config(meta["config"], str(src / HUB_CONFIG))
    bottleneck = to_adaptune_config({**meta["config"], "inv_adapter": None}, len(blocks), str(src / HUB_CONFIG))
    if inv is not None:
        _check_invertible_model(model, src)
    config: AdapterConfig | MixConfig = bottleneck if inv is None else MixConfig(parts=(bottleneck, inv))
    member = "" if inv is None else "parts.0."  # the bottleneck's parameters inside the mix
    tensors = read_hub_weights(src, "adapter")
    with adapter_to_fill(model, name, config, activate=activate) as targets:
        by_place = {(t.layer, t.location): f"{t.module}.adapters.{name}" for t in targets if t.layer >= 0}
        coupling = next((f"{t.module}.adapters.{name}" for t in targets if t.layer < 0 and t.mode == "output"), None)
        if inv is not None:
            _check_inverse_place(model, targets, src)
        modules = adapter_modules(model, name)
        state = {f"{p}.{k}": v for p, m in modules.items() for k, v in m.state_dict(keep_vars=True).items()}
        filled: set[str] = set()
        for key, value in tensors.items():
            inv_key = _INV_KEY.match(key)
            if inv_key is not None and inv_key.group(1) == saved:
                if coupling is None:
                    raise ValueError(f"{src}: weight {key} belongs to an invertible adapter, which this config lacks")
                target = f"{coupling}.parts.1.{inv_key.group(2)}"
                with torch.no_grad():
                    copy_checked_tensor(state[target], value, key, src)
                filled.add(target)
                continue
            parts = _split_key(key)
            if parts is None or parts[2] != saved:
                continue
            layer, location, _, param = parts
            ours = _param_name(param, bottleneck.layer_norm_before)
            if ours is None:
                continue
            if ours.startswith("?") or (layer, location) not in by_place:
                raise ValueError(f"{src}: weight {key} has no place in adaptune's {bottleneck.placement} layout")
            target = f"{by_place[(layer, location)]}.{member}{ours}"
            value = value.reshape(()) if ours == "scale" else value
            with torch.no_grad():
                copy_checked_tensor(state[target], value, key, src)
            filled.add(target)
        missing = sorted(k for k in set(state) - filled if not k.endswith(".scale"))
        if missing:
            raise ValueError(f"{src}: no weights for {missing[:3]} (is this the adapter named {saved!r}?)")
    return name


def _other_method(cfg: dict[str, Any]) -> Callable[..., str] | None:
    """The loader for a non-bottleneck AdapterHub config (by its ``architecture``; Compacter is a bottleneck with
    ``phm_layer``), or None for a plain bottleneck adapter."""
    architecture = cfg.get("architecture", "bottleneck")
    if architecture == "lora":
        return load_hub_lora
    if architecture == "prefix_tuning":
        return load_hub_prefix
    if architecture in (None, "bottleneck") and cfg.get("phm_layer"):
        return load_hub_compacter
    return None


def load_adapterhub_head(model: nn.Module, folder: str | Path) -> None:
    """Load an AdapterHub 2-layer tanh classification head into a ``*ForSequenceClassification`` model.

    Their head computes ``W4·tanh(W1·h[:, 0] + b1) + b4``: BERT's pooler + classifier, or RoBERTa's
    ``classifier.dense`` + ``classifier.out_proj``.
    """
    src = Path(folder)
    meta = read_hub_json(src / HUB_HEAD_CONFIG)
    cfg = meta.get("config", {})
    if cfg.get("head_type") != "classification" or cfg.get("layers") != 2 or cfg.get("activation_function") != "tanh":
        raise ValueError(f"{src / HUB_HEAD_CONFIG}: only 2-layer tanh classification heads are supported")
    tensors = read_hub_weights(src, "model_head")
    first = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if re.search(r"^heads\.[^.]+\.1\.", k)}
    last = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if re.search(r"^heads\.[^.]+\.4\.", k)}
    dense_path, out_path = None, None
    names = dict(model.named_modules())
    if "classifier.dense" in names and "classifier.out_proj" in names:
        dense_path, out_path = "classifier.dense", "classifier.out_proj"
    elif "classifier" in names:
        dense_path = next((n for n in names if n.endswith("pooler.dense")), None)
        out_path = "classifier"
    if dense_path is None or out_path is None:
        raise ValueError(f"{src}: {type(model).__name__} has no pooler/classifier pair to hold this head")
    for path, weights in ((dense_path, first), (out_path, last)):
        module = names[path]
        for kind, value in weights.items():
            param = getattr(module, kind)
            if param.shape != value.shape:
                raise ValueError(
                    f"{src}: head {path}.{kind} has shape {tuple(value.shape)}, model {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value.to(param.dtype))
