"""Adapter configuration: one frozen dataclass, presets as named constructors, JSON round-trip.

A config says *what* an adapter is (size, activation, init, scaling) and *where* it goes (placement,
layers, explicit module patterns). It never holds weights or model references, so it can be written to
``adapter_config.json`` and read back by a later (or earlier) adaptune version.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ACTIVATIONS", "INITS", "PLACEMENTS", "AdapterConfig", "parse_layers"]

Placement = Literal["attention", "ffn", "both", "parallel", "ffn_post_ln", "attention_post_ln", "both_post_ln"]
PLACEMENTS: tuple[str, ...] = (
    "attention",
    "ffn",
    "both",
    "parallel",
    "ffn_post_ln",
    "attention_post_ln",
    "both_post_ln",
)
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "gelu_new", "gelu_tanh", "silu", "swish", "tanh", "identity")
INITS: tuple[str, ...] = ("identity", "normal", "bert")

LayerSpec = tuple[int, ...] | str | None
_LAYER_STR = re.compile(
    r"^\s*(all|last:\d+|top-half|bottom-half|-?\d+(\s*(-|:)\s*-?\d+)?(\s*,\s*-?\d+(\s*(-|:)\s*-?\d+)?)*)\s*$"
)


@dataclass(frozen=True)
class AdapterConfig:
    """A bottleneck adapter: ``h' = h + s * up(act(down(h)))``, and where it is inserted.

    Attributes:
        placement: ``"attention"`` (after the attention sublayer's output projection), ``"ffn"`` (after the
            feed-forward output projection), ``"both"`` (Houlsby: attention and FFN) or ``"parallel"``
            (beside the FFN: ``ffn(x) + s * f(x)``). Post-LN interop placements (AdapterHub's ``seq_bn``), for
            models whose sublayers end in ``LN(x + h)``: ``"ffn_post_ln"`` / ``"attention_post_ln"`` /
            ``"both_post_ln"`` hook that LayerNorm and compute ``LN(v + s * f(LN(v)))`` with ``v = x + h``.
        reduction_factor: bottleneck size = model width // reduction_factor (ignored if ``bottleneck_size``).
        bottleneck_size: explicit bottleneck size; overrides ``reduction_factor``.
        activation: one of ``ACTIVATIONS``.
        dropout: dropout on the bottleneck activations (training only).
        scaling: the factor ``s`` on the adapter branch.
        learn_scaling: make ``s`` a trainable scalar initialised at ``scaling``.
        init: ``"identity"`` (zero up-projection: a new adapter changes nothing), ``"normal"`` (both
            projections ~ N(0, init_std)), ``"bert"`` (both ~ N(0, 0.02)).
        init_std: the standard deviation for ``init="normal"``.
        layer_norm_before: LayerNorm on the adapter input (inside the branch).
        layer_norm_after: LayerNorm on the branch output, before scaling.
        gate: a learned input-dependent gate per token, ``h + sigmoid(w·h + b) * s * f(h)`` (dynamic adapter);
            starts at 0.5.
        layers: which transformer blocks get adapters: ``None``/``"all"``, a tuple of indices (negative counts
            from the end), or a string: ``"0,2,4"``, ``"2-5"`` (inclusive), ``"last:3"``, ``"top-half"``,
            ``"bottom-half"``. Blocks are numbered in module order across stacks (encoder then decoder).
        target_modules: explicit override of where adapters go: module-name patterns (an exact dotted name,
            a ``.suffix``, or a full regex). Each matched module's output is adapted (or, with
            ``placement="parallel"``, gets ``out + s * f(input)``). Skips the architecture table and the
            structural rule.
    """

    placement: Placement = "ffn"
    reduction_factor: float = 16
    bottleneck_size: int | None = None
    activation: str = "relu"
    dropout: float = 0.0
    scaling: float = 1.0
    learn_scaling: bool = False
    init: str = "identity"
    init_std: float = 1e-2
    layer_norm_before: bool = False
    layer_norm_after: bool = False
    gate: bool = False
    layers: LayerSpec = None
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Normalise list/range inputs so configs compare equal and hash after a JSON round-trip.
        if isinstance(self.layers, (list, range)):
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", (self.target_modules,))
        elif isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"AdapterConfig.{name}={getattr(self, name)!r}: expected {expected}")

        if self.placement not in PLACEMENTS:
            raise bad("placement", f"one of {PLACEMENTS}")
        if self.activation not in ACTIVATIONS:
            raise bad("activation", f"one of {ACTIVATIONS}")
        if self.init not in INITS:
            raise bad("init", f"one of {INITS}")
        if self.bottleneck_size is None and not (self.reduction_factor > 0):
            raise bad("reduction_factor", "a number > 0")
        if self.bottleneck_size is not None and (
            not isinstance(self.bottleneck_size, int) or self.bottleneck_size < 1
        ):
            raise bad("bottleneck_size", "an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "a probability in [0, 1)")
        if self.init_std <= 0:
            raise bad("init_std", "a number > 0")
        if isinstance(self.layers, str) and not _LAYER_STR.match(self.layers):
            raise bad("layers", "'all', 'last:K', 'top-half', 'bottom-half', '0,2,4' or '2-5'")
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(p, str) and p for p in self.target_modules)
        ):
            raise bad("target_modules", "a non-empty list of module-name patterns")

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def pfeiffer(cls, reduction_factor: float = 16, **kwargs: Any) -> AdapterConfig:
        """Pfeiffer et al. (2021): one adapter after the FFN sublayer, ReLU."""
        kwargs.setdefault("activation", "relu")
        kwargs.setdefault("placement", "ffn")
        return cls(reduction_factor=reduction_factor, **kwargs)

    @classmethod
    def houlsby(cls, reduction_factor: float = 16, **kwargs: Any) -> AdapterConfig:
        """Houlsby et al. (2019): adapters after both the attention and the FFN sublayers, swish."""
        kwargs.setdefault("activation", "swish")
        kwargs.setdefault("placement", "both")
        return cls(reduction_factor=reduction_factor, **kwargs)

    @classmethod
    def parallel(cls, reduction_factor: float = 16, scaling: float = 4.0, **kwargs: Any) -> AdapterConfig:
        """He et al. (2022): an adapter beside the FFN, ``ffn(x) + 4 * f(x)``, ReLU."""
        kwargs.setdefault("activation", "relu")
        kwargs.setdefault("placement", "parallel")
        return cls(reduction_factor=reduction_factor, scaling=scaling, **kwargs)

    # ---- sizes ---------------------------------------------------------------------------------
    def hidden_size_for(self, width: int) -> int:
        """The bottleneck size for a host of the given width."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, int(width // self.reduction_factor))

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "adapter config") -> AdapterConfig:
        """Build a config from a dict; unknown keys (from a newer adaptune) are dropped with a warning."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown keys {unknown} (written by a newer adaptune?)", stacklevel=2)
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None


def parse_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """Resolve a layer spec against a model with ``num_layers`` blocks; returns sorted unique indices.

    Raises:
        ValueError: an index is out of range or the spec selects nothing.
    """
    if spec is None or spec == "all":
        return list(range(num_layers))
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith("last:"):
            k = int(s[5:])
            picked = list(range(max(0, num_layers - k), num_layers))
        elif s == "top-half":
            picked = list(range(num_layers // 2, num_layers))
        elif s == "bottom-half":
            picked = list(range(num_layers // 2))
        else:
            picked = []
            for part in s.split(","):
                m = re.match(r"^\s*(-?\d+)\s*(?:[-:]\s*(-?\d+))?\s*$", part)
                if m is None:
                    raise ValueError(f"layers={spec!r}: cannot read {part!r}")
                lo = int(m.group(1))
                hi = int(m.group(2)) if m.group(2) is not None else lo
                picked.extend(range(lo, hi + 1))
    else:
        picked = list(spec)
    resolved = []
    for i in picked:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise ValueError(f"layers={spec!r}: layer {i} is out of range for a model with {num_layers} blocks")
        resolved.append(j)
    if not resolved:
        raise ValueError(f"layers={spec!r} selects no layer of a model with {num_layers} blocks")
    return sorted(set(resolved))
