"""Read AdapterHub prefix-tuning folders (``PrefixTuningConfig``: ``architecture="prefix_tuning"``).

AdapterHub keeps one prefix module per adapter and attention kind (``self_prefix``; ``cross_prefix`` /
``encoder_prefix`` on encoder-decoders) in a pool that every layer references, so the saved file holds the same
tensors under several names (``<base>.prefix_tuning.prefix_tunings.<name>.self_prefix.*`` and
``...layer.<i>...prefix_tuning.pool.prefix_tunings.<name>.self_prefix.*``); they must agree.

Its layout is adaptune's (``methods.prefix``): per prefix position the keys and values of every layer,
``(P, L·2·H_kv·d)`` with layer l's key at slot 2l and value at 2l + 1, concatenated in front of each attention's
keys and values, the prefix positions unmasked::

    flat=False   wte.weight (P, H)  -> control_trans.0 Linear(H, b) -> tanh -> control_trans.2 Linear(b, L·2·H_kv·d)
                 -> PrefixConfig(reparam=True, reparam_hidden=b): embedding, mlp.0, mlp.2
    flat=True    control_trans (P·L·2·H_kv·d,)  -> PrefixConfig(reparam=False): prefix (P, L·2·H_kv·d)

AdapterHub leaves the tokens at positions 0..T-1 (the prefix has none), so the config sets ``shift_positions=False``
(adaptune passes ``position_ids`` 0..T-1 itself). Matched on BERT, GPT-2 and LLaMA (prefix keys after RoPE, as in
both); other model types are refused: RoBERTa-style models count positions from the padding index, which an
explicit 0..T-1 would break. AdapterHub 1.3.0's own decoder prefixes only work with eager attention (with sdpa
an attention mask masks them out); the fixtures use eager.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.model import adapter_modules, adapter_to_fill
from ...methods.prefix import PrefixConfig
from ..tensors import copy_checked_tensor

__all__ = ["load_hub_prefix", "to_prefix_config"]

# Settings that must have these values: no gates, no prefix dropout (adaptune's prefix has none), every layer.
_FIXED: dict[str, Any] = {"use_gating": False, "dropout": 0.0, "leave_out": []}
# AdapterHub parameter -> adaptune's PrefixTuning parameter
_PARAM = {
    "wte.weight": "embedding",
    "control_trans.0.weight": "mlp.0.weight",
    "control_trans.0.bias": "mlp.0.bias",
    "control_trans.2.weight": "mlp.2.weight",
    "control_trans.2.bias": "mlp.2.bias",
    "control_trans": "prefix",  # flat: (P·L·2·H_kv·d,) viewed as (P, L·2·H_kv·d)
}
# model types checked against AdapterHub (see the module docstring)
_MATCHED = ("bert", "gpt2", "llama")


def to_prefix_config(cfg: dict[str, Any], source: str) -> PrefixConfig:
    """The PrefixConfig equivalent to an AdapterHub ``PrefixTuningConfig`` dict.

    Raises:
        ValueError: a key/value adaptune cannot express (named in the message).
    """

    def unsupported(key: str) -> ValueError:
        return ValueError(f"{source}: AdapterHub setting {key}={cfg.get(key)!r} is not supported by adaptune")

    for key, value in _FIXED.items():
        if (cfg.get(key) or value) != value:
            raise unsupported(key)
    if str(cfg.get("non_linearity", "tanh")).lower() != "tanh":
        raise unsupported("non_linearity")
    for key in ("prefix_length", "bottleneck_size"):
        if not isinstance(cfg.get(key, 1), int) or cfg.get(key, 1) < 1:
            raise unsupported(key)
    flat = bool(cfg.get("flat", False))
    return PrefixConfig(
        prefix_length=int(cfg.get("prefix_length", 30)),
        reparam=not flat,
        reparam_hidden=int(cfg.get("bottleneck_size", 512)),
        shift_positions=False,  # AdapterHub leaves the tokens at 0..T-1
    )


def _prefix_tensors(tensors: dict[str, torch.Tensor], saved: str, src: Path) -> dict[str, tuple[str, torch.Tensor]]:
    """AdapterHub parameter (``wte.weight``, ``control_trans``...) -> (a key holding it, tensor), copies checked."""
    out: dict[str, tuple[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = re.match(rf"^(?:.*\.)?prefix_tunings\.{re.escape(saved)}\.([^.]+)\.(.+)$", key)
        if m is None:
            continue
        location, param = m.groups()
        if location != "self_prefix":
            raise ValueError(f"{src}: {key}: prefixes at {location!r} (encoder-decoder models) are not supported")
        if param in out and not torch.equal(out[param][1], value):
            raise ValueError(f"{src}: {key} differs from {out[param][0]}, which should be the same shared tensor")
        out.setdefault(param, (key, value))
    if not out:
        raise ValueError(f"{src}: no 'prefix_tunings.{saved}.' weights (is this the adapter named {saved!r}?)")
    return out


def load_hub_prefix(
    model: nn.Module, src: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor], name: str, activate: bool
) -> str:
    """Attach the AdapterHub prefix tuning in ``tensors`` (read from ``src``) to ``model`` as ``name``."""
    source = str(src / "adapter_config.json")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _MATCHED:
        raise ValueError(
            f"{source}: AdapterHub prefix tuning is reproduced on model types {', '.join(_MATCHED)}; {model_type!r} "
            "is not supported (its token positions would differ from AdapterHub's)"
        )
    config = to_prefix_config(meta["config"], source)
    found = _prefix_tensors(tensors, meta.get("name", "adapter"), src)
    with adapter_to_fill(model, name, config, activate=activate):
        (module,) = adapter_modules(model, name).values()
        state = module.state_dict(keep_vars=True)
        with torch.no_grad():
            for param, (key, value) in found.items():
                ours = _PARAM.get(param)
                if ours is None or ours not in state:
                    raise ValueError(f"{src}: weight {key} has no place in adaptune's prefix ({sorted(state)})")
                if ours == "prefix" and value.numel() == state[ours].numel():  # else the shape check names both
                    value = value.reshape(state[ours].shape)
                copy_checked_tensor(state[ours], value, key, src)
        missing = sorted(set(state) - {_PARAM[p] for p in found if p in _PARAM})
        if missing:
            raise ValueError(f"{src}: no weights for {missing}")
    return name
