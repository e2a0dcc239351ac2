"""AdapterHub bottleneck configs -> adaptune configs, and where AdapterHub keeps an adapter (layer, location).

The lowest module of ``formats.adapterhub``: the bottleneck loader (``adapter``), Compacter (``compacter``, a
bottleneck with PHM projections), fusion and export all read their placement from here. ``invertible_config`` reads
the invertible half of a MAD-X language adapter (``inv_adapter="nice"``: a NICE coupling on the embeddings).
"""

from __future__ import annotations

import re
from typing import Any

from ...methods.bottleneck import AdapterConfig
from ...methods.invertible import InvertibleConfig
from ..names import HUB_CONFIG

__all__ = ["hub_location", "invertible_config", "layer_of", "to_adaptune_config"]

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


def invertible_config(cfg: dict[str, Any], source: str = HUB_CONFIG) -> InvertibleConfig | None:
    """The InvertibleConfig of a bottleneck config with ``inv_adapter="nice"`` (None without ``inv_adapter``).

    AdapterHub's ``NICECouplingBlock`` builds ``F`` and ``G`` as ``Linear(in, int(in // r)) -> act -> Linear``, with
    ``r = inv_adapter_reduction_factor`` and the bottleneck's own ``non_linearity``, as ``InvertibleConfig`` does.

    Raises:
        ValueError: ``inv_adapter`` other than ``"nice"`` (``"glow"``), or a reduction factor / non-linearity
            adaptune cannot express (named in the message).
    """
    kind = cfg.get("inv_adapter")
    if kind is None:
        return None
    if kind != "nice":
        raise ValueError(
            f"{source}: AdapterHub setting inv_adapter={kind!r} is not supported by adaptune (only 'nice' couplings)"
        )
    rf = cfg.get("inv_adapter_reduction_factor")
    if isinstance(rf, bool) or not isinstance(rf, (int, float)) or rf <= 0:
        raise ValueError(
            f"{source}: AdapterHub setting inv_adapter_reduction_factor={rf!r} is not supported by adaptune "
            "(expected a number > 0)"
        )
    act = str(cfg.get("non_linearity", "relu")).lower()
    if act not in _ACTIVATIONS:
        raise ValueError(f"{source}: AdapterHub setting non_linearity={act!r} is not supported by adaptune")
    return InvertibleConfig(reduction_factor=float(rf), activation=_ACTIVATIONS[act])


def hub_location(left: str) -> str:
    """``attention`` or ``ffn`` for the module path AdapterHub keeps adapters / fusion layers on."""
    attention = left.endswith(("attention.output", ".attention")) or "attention_adapters" in left
    return "attention" if attention else "ffn"


def layer_of(path: str) -> int:
    """The block index in a module path (its last number: ``bert.encoder.layer.3.output`` -> 3), or -1."""
    numbers = re.findall(r"\.(\d+)(?=\.|$)", "." + path)
    return int(numbers[-1]) if numbers else -1
