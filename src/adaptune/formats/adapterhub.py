"""Read adapters saved by AdapterHub's ``adapters`` library (which does not run on Transformers 5).

Their bottleneck configs map onto adaptune placements (formulas in ``tests/fixtures/adapterhub/README.md``):

| AdapterHub              | adaptune                                  | math (BERT family; v = x + h)   |
|-------------------------|-------------------------------------------|----------------------------------|
| ``seq_bn`` (pfeiffer)   | ``ffn_post_ln``                           | LN(v + f(LN(v)))                 |
| ``double_seq_bn``       | ``both`` (output of each sublayer's dense)| LN(x + h + f(h))                 |
| ``par_bn``              | ``parallel``, scaling 4                   | LN(x + h + 4 f(x))               |
| ``scaled_par_bn``       | ``parallel`` with a learned scalar        |                                  |
| Stack / Fuse            | ``Stack`` / ``Fuse``                      |                                  |

Weights are read from ``adapter.safetensors`` or ``pytorch_adapter.bin`` (``torch.load(weights_only=True)``: never
code). A setting adaptune cannot express raises ``ValueError`` naming the key and value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.model import adapter_modules, add_adapter, delete_adapter, set_active
from ..core.placement import find_blocks
from ..methods.bottleneck import AdapterConfig
from ..util import atomic_dir_write
from .names import HUB_CONFIG, HUB_FUSION_CONFIG, HUB_HEAD_CONFIG, HUB_SETUP
from .native import copy_checked_tensor

__all__ = [
    "is_adapterhub_folder",
    "load_adapterhub",
    "load_adapterhub_head",
    "load_adapterhub_setup",
    "save_adapterhub",
    "to_adaptune_config",
]

_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "swish": "swish",
    "silu": "silu",
    "tanh": "tanh",
    "linear": "identity",
    "identity": "identity",
}
# Settings that must have these values (their defaults) for the math above to hold.
_FIXED = {
    "original_ln_after": True,
    "residual_before_ln": True,
    "adapter_residual_before_ln": False,
    "use_gating": False,
    "phm_layer": False,
    "inv_adapter": None,
    "cross_adapter": False,
    "stochastic_depth": 0.0,
}


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


def to_adaptune_config(cfg: dict[str, Any], num_layers: int, source: str = HUB_CONFIG) -> AdapterConfig:
    """The AdapterConfig equivalent to an AdapterHub bottleneck config dict.

    Raises:
        ValueError: a key/value adaptune cannot express (named in the message).
    """

    def unsupported(key: str) -> ValueError:
        return ValueError(f"{source}: AdapterHub setting {key}={cfg.get(key)!r} is not supported by adaptune")

    if cfg.get("architecture", "bottleneck") not in (None, "bottleneck"):
        raise unsupported("architecture")
    for key, value in _FIXED.items():
        if cfg.get(key, value) != value:
            raise unsupported(key)
    mh, out, parallel = bool(cfg.get("mh_adapter")), bool(cfg.get("output_adapter")), bool(cfg.get("is_parallel"))
    if parallel:
        if mh or not out:
            raise unsupported("mh_adapter")
        placement = "parallel"
    elif cfg.get("original_ln_before"):
        placement = {
            (True, True): "both_post_ln",
            (False, True): "ffn_post_ln",
            (True, False): "attention_post_ln",
        }.get((mh, out), "")
    else:
        placement = {(True, True): "both", (False, True): "ffn", (True, False): "attention"}.get((mh, out), "")
    if not placement:
        raise unsupported("output_adapter")
    rf = cfg.get("reduction_factor", 16)
    if not isinstance(rf, (int, float)):
        raise unsupported("reduction_factor")
    act = str(cfg.get("non_linearity", "relu")).lower()
    if act not in _ACTIVATIONS:
        raise unsupported("non_linearity")
    scaling = cfg.get("scaling", 1.0)
    if scaling not in ("learned",) and not isinstance(scaling, (int, float)):
        raise unsupported("scaling")
    leave_out = [int(i) for i in cfg.get("leave_out") or []]
    layers = tuple(i for i in range(num_layers) if i not in leave_out) if leave_out else None
    return AdapterConfig(
        placement=placement,  # type: ignore[arg-type]
        reduction_factor=rf,
        bottleneck_size=None,
        activation=_ACTIVATIONS[act],
        dropout=float(cfg.get("dropout", 0.0) or 0.0),
        scaling=1.0 if scaling == "learned" else float(scaling),
        learn_scaling=scaling == "learned",
        layer_norm_before=bool(cfg.get("ln_before")),
        layer_norm_after=bool(cfg.get("ln_after")),
        layers=layers,
    )


def _read_weights(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    st, pt = folder / f"{stem}.safetensors", folder / f"pytorch_{stem}.bin"
    if stem == "model_adapter_fusion":
        st, pt = folder / "adapter_fusion.safetensors", folder / "pytorch_model_adapter_fusion.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
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
    layer = _layer_of(left)
    return None if layer < 0 else (layer, _hub_location(left), name, param)


def _hub_location(left: str) -> str:
    """``attention`` or ``ffn`` for the module path AdapterHub keeps adapters / fusion layers on."""
    attention = left.endswith(("attention.output", ".attention")) or "attention_adapters" in left
    return "attention" if attention else "ffn"


def _param_name(param: str, ln_before: bool) -> str | None:
    if param.startswith("adapter_down."):
        index, rest = param.split(".")[1], param.split(".", 2)[2]
        if ln_before:
            return {"0": "norm_before", "1": "down"}.get(index, "?") + "." + rest
        return "down." + rest if index == "0" else None
    if param.startswith("adapter_norm_before."):
        return None  # a second copy of adapter_down.0 (the LayerNorm) when ln_before is set
    return _PARAM.get(param, "?")


def load_adapterhub(model: nn.Module, folder: str | Path, name: str | None = None, *, activate: bool = True) -> str:
    """Load an AdapterHub adapter folder into ``model``; returns the adapter's name in the model."""
    src = Path(folder)
    meta = json.loads((src / HUB_CONFIG).read_text(encoding="utf-8"))
    saved = meta.get("name", "adapter")
    name = name or saved
    blocks = find_blocks(model)
    config = to_adaptune_config(meta["config"], len(blocks), str(src / HUB_CONFIG))
    hidden = meta.get("hidden_size")
    if hidden is not None and hidden not in {b.width for b in blocks}:
        raise ValueError(f"{src}: adapter is for hidden size {hidden}, the model's blocks are {blocks[0].width} wide")
    tensors = _read_weights(src, "adapter")
    targets = add_adapter(model, name, config, activate=False)
    try:
        by_place = {(t.layer, t.location): f"{t.module}.adapters.{name}" for t in targets}
        modules = adapter_modules(model, name)
        state = {f"{p}.{k}": v for p, m in modules.items() for k, v in m.state_dict(keep_vars=True).items()}
        filled: set[str] = set()
        for key, value in tensors.items():
            parts = _split_key(key)
            if parts is None or parts[2] != saved:
                continue
            layer, location, _, param = parts
            ours = _param_name(param, config.layer_norm_before)
            if ours is None:
                continue
            if ours.startswith("?") or (layer, location) not in by_place:
                raise ValueError(f"{src}: weight {key} has no place in adaptune's {config.placement} layout")
            target = f"{by_place[(layer, location)]}.{ours}"
            value = value.reshape(()) if ours == "scale" else value
            with torch.no_grad():
                copy_checked_tensor(state[target], value, key, src)
            filled.add(target)
        missing = sorted(k for k in set(state) - filled if not k.endswith(".scale"))
        if missing:
            raise ValueError(f"{src}: no weights for {missing[:3]} (is this the adapter named {saved!r}?)")
    except Exception:
        delete_adapter(model, name)
        raise
    if activate:
        set_active(model, name)
    return name


def _setup_from(node: Any, source: str) -> Any:
    """An adaptune composition from AdapterHub's ``adapter_setup.json`` tree."""
    from ..core.composition import Fuse, Stack

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


def load_adapterhub_setup(model: nn.Module, folder: str | Path, *, activate: bool = True) -> Any:
    """Load a folder written by AdapterHub's ``save_adapter_setup`` (adapters, fusion layers) and activate it."""
    from ..core.composition import Fuse, adapter_names
    from ..methods.fusion import add_fusion, fusion_modules

    src = Path(folder)
    cfg = src / HUB_SETUP
    meta = json.loads(cfg.read_text(encoding="utf-8"))
    setup = _setup_from(meta.get("adapter_setup"), str(cfg))
    for name in adapter_names(setup):
        load_adapterhub(model, src / name, name=name, activate=False)
    fuses = [setup] if isinstance(setup, Fuse) else [c for c in getattr(setup, "children", ()) if isinstance(c, Fuse)]
    for fuse in fuses:
        fdir = src / ",".join(fuse.children)
        fmeta = json.loads((fdir / HUB_FUSION_CONFIG).read_text(encoding="utf-8"))
        fcfg = fmeta.get("config", {})
        for key, ok in (
            ("temperature", False),
            ("query_before_ln", False),
            ("residual_before", False),
            ("value_before_softmax", True),
            ("query", True),
            ("key", True),
        ):
            if fcfg.get(key, ok) != ok:
                raise ValueError(
                    f"{fdir / HUB_FUSION_CONFIG}: fusion setting {key}={fcfg.get(key)!r} is not supported"
                )
        add_fusion(model, list(fuse.children), fuse.name, static=not fcfg.get("value", True), activate=False)
        tensors = _read_weights(fdir, "model_adapter_fusion")
        layers = fusion_modules(model, fuse.name)
        by_layer = {(_layer_of(p), "attention" if ".attention" in p else "ffn"): m for p, m in layers.items()}
        for key, value in tensors.items():
            m = re.match(r"^(.*)\.adapter_fusion_layer\.[^.]+\.(query|key|value)\.(weight|bias)$", key)
            if m is None:
                continue
            left, proj, kind = m.groups()
            place = (_layer_of(left), _hub_location(left))
            if place not in by_layer:
                raise ValueError(f"{fdir}: fusion weight {key} has no place in this model")
            param = getattr(getattr(by_layer[place], proj), kind)
            with torch.no_grad():
                param.copy_(value.to(param.dtype))
    if activate:
        set_active(model, setup)
    return setup


def _layer_of(path: str) -> int:
    numbers = re.findall(r"\.(\d+)(?=\.|$)", "." + path)
    return int(numbers[-1]) if numbers else -1


def load_adapterhub_head(model: nn.Module, folder: str | Path) -> None:
    """Load an AdapterHub 2-layer tanh classification head into a ``*ForSequenceClassification`` model.

    Their head computes ``W4·tanh(W1·h[:, 0] + b1) + b4``: BERT's pooler + classifier, or RoBERTa's
    ``classifier.dense`` + ``classifier.out_proj``.
    """
    src = Path(folder)
    meta = json.loads((src / HUB_HEAD_CONFIG).read_text(encoding="utf-8"))
    cfg = meta.get("config", {})
    if cfg.get("head_type") != "classification" or cfg.get("layers") != 2 or cfg.get("activation_function") != "tanh":
        raise ValueError(f"{src / 'head_config.json'}: only 2-layer tanh classification heads are supported")
    tensors = _read_weights(src, "model_head")
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


def save_adapterhub(model: nn.Module, name: str, out_dir: str | Path) -> Path:
    """Write adapter ``name`` in AdapterHub's format (``adapter_config.json`` + ``adapter.safetensors``; AdapterHub
    reads it with ``model.load_adapter(folder, use_safetensors=True)``).

    Exportable: ``ffn_post_ln`` (→ ``seq_bn``), ``both`` (→ ``double_seq_bn``) and ``parallel`` (→ ``par_bn``) adapters
    without a gate, on the BERT family. Anything else raises ``ValueError`` naming what cannot be expressed.
    """
    from safetensors.torch import save_file

    from ..core.model import adapter_config, adapter_targets

    cfg = adapter_config(model, name)
    if cfg.gate or cfg.target_modules:
        raise ValueError(f"adapter {name!r}: gate / target_modules have no AdapterHub equivalent")
    kinds = {
        "ffn_post_ln": {"mh_adapter": False, "output_adapter": True, "original_ln_before": True, "is_parallel": False},
        "both": {"mh_adapter": True, "output_adapter": True, "original_ln_before": False, "is_parallel": False},
        "parallel": {"mh_adapter": False, "output_adapter": True, "original_ln_before": False, "is_parallel": True},
    }
    if cfg.placement not in kinds:
        raise ValueError(
            f"adapter {name!r}: placement {cfg.placement!r} has no AdapterHub equivalent ({sorted(kinds)})"
        )
    blocks = find_blocks(model)
    width = blocks[0].width
    modules = adapter_modules(model, name)
    size = next(iter(modules.values())).size
    if width / size != int(width / size) and cfg.bottleneck_size is not None:
        raise ValueError(f"adapter {name!r}: bottleneck {size} is not width / an integer reduction factor")
    act = {"identity": "linear", "gelu_tanh": "gelu_new", "silu": "swish"}.get(cfg.activation, cfg.activation)
    used = {t for t in (_layer_of(p) for p in adapter_targets(model, name))}
    hub = {
        **kinds[cfg.placement],
        "reduction_factor": width // size,
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
        "leave_out": [b.index for b in blocks if b.index not in used],
        "phm_layer": False,
        "inv_adapter": None,
        "cross_adapter": False,
        "stochastic_depth": 0.0,
    }
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
    meta = {
        "config": hub,
        "hidden_size": width,
        "model_class": type(model).__name__,
        "model_name": None,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "name": name,
        "version": "adapters.1.3.0",
    }
    # clone: the ln_before weights are written under two names, and safetensors refuses shared storage
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    out = Path(out_dir)
    atomic_dir_write(
        out,
        {
            "adapter.safetensors": lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
            HUB_CONFIG: lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"),
        },
    )
    return out
