"""What every adapter method's config shares: where the adapter goes, the method's name, JSON round-trip.

``MethodConfig`` holds the *where* (placement, layers, explicit module patterns) and the serialisation; each
method subclasses it with its own *what* (``adaptune.methods.bottleneck.AdapterConfig``: size, activation,
init, scaling). A config never holds weights or model references, so it can be written to
``adapter_config.json`` and read back by a later (or earlier) adaptune version.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

__all__ = ["PLACEMENTS", "LayerSpec", "MethodConfig", "Placement", "parse_layers"]

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

LayerSpec = tuple[int, ...] | str | None
_LAYER_STR = re.compile(
    r"^\s*(all|last:\d+|top-half|bottom-half|-?\d+(\s*(-|:)\s*-?\d+)?(\s*,\s*-?\d+(\s*(-|:)\s*-?\d+)?)*)\s*$"
)
_C = TypeVar("_C", bound="MethodConfig")


@dataclass(frozen=True)
class MethodConfig:
    """Where an adapter goes, for every method; subclasses add what the adapter is.

    A subclass sets the class attribute ``method`` (its registry name, written to ``adapter_config.json``),
    adds its own fields with defaults, and extends ``_validate`` (calling ``super()._validate()``).

    Attributes:
        placement: ``"attention"`` (after the attention sublayer's output projection), ``"ffn"`` (after the
            feed-forward output projection), ``"both"`` (attention and FFN) or ``"parallel"`` (beside the FFN:
            the adapter reads the FFN input and adds to its output). Post-LN interop placements (AdapterHub's
            ``seq_bn``), for models whose sublayers end in ``LN(x + h)``: ``"ffn_post_ln"`` /
            ``"attention_post_ln"`` / ``"both_post_ln"`` hook that LayerNorm.
        layers: which transformer blocks get adapters: ``None``/``"all"``, a tuple of indices (negative counts
            from the end), or a string: ``"0,2,4"``, ``"2-5"`` (inclusive), ``"last:3"``, ``"top-half"``,
            ``"bottom-half"``. Blocks are numbered in module order across stacks (encoder then decoder).
        target_modules: explicit override of where adapters go: module-name patterns (an exact dotted name,
            a ``.suffix``, or a full regex). Each matched module's output is adapted (or, with
            ``placement="parallel"``, the adapter reads the module's input and adds to its output). Skips the
            architecture table and the structural rule.
    """

    method: ClassVar[str] = ""
    # The method rewrites the whole model's inputs (prompt / prefix tuning): one "model"-mode target at the model
    # itself instead of places found by ``placement`` (``core.contract.ModelAdapter``).
    whole_model: ClassVar[bool] = False
    # The method hooks the input embeddings' output and the input of the LM head that reads the output embeddings
    # (invertible adapters, MAD-X): targets from ``core.placement.embedding_targets``, not from ``placement``.
    at_embeddings: ClassVar[bool] = False

    placement: Placement = "ffn"
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

    def _bad(self, name: str, expected: str) -> ValueError:
        """The error for a field holding an invalid value (names the class, the field and what fits)."""
        return ValueError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: expected {expected}")

    def _validate(self) -> None:
        if self.placement not in PLACEMENTS:
            raise self._bad("placement", f"one of {PLACEMENTS}")
        if isinstance(self.layers, str) and not _LAYER_STR.match(self.layers):
            raise self._bad("layers", "'all', 'last:K', 'top-half', 'bottom-half', '0,2,4' or '2-5'")
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(p, str) and p for p in self.target_modules)
        ):
            raise self._bad("target_modules", "a non-empty list of module-name patterns")

    # ---- where, for methods that adapt single projections ---------------------------------------
    def projections(self) -> dict[str, str] | None:
        """For methods that adapt individual linear projections (LoRA, (IA)³): projection kind
        (``core.placement.PROJECTIONS``) -> slot mode, found structurally in every selected block; ``None`` (the
        default) places the adapter by ``placement`` instead."""
        return None

    def explicit_mode(self, module: str) -> str | None:
        """The slot mode for a module matched by ``target_modules``; ``None`` (the default) follows ``placement``
        (``"parallel"`` reads the module's input, anything else its output)."""
        return None

    def components(self) -> tuple[MethodConfig, ...]:
        """For a mix of methods (``methods.mix``: MAM, UniPELT): its member configs, whose places placement unions
        (``core.placement.find_targets``); ``()`` (the default) for a single method."""
        return ()

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``method`` first, then every field (tuples become lists)."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any], source: str = "adapter config") -> _C:
        """Build a config from a dict; unknown keys (from a newer adaptune) are dropped with a warning.

        A ``method`` key, if present, must name this class's method (``core.contract.config_from_dict`` picks
        the class from it).

        Raises:
            ValueError: not a dict, another method's config, or an invalid value; the message starts with
                ``source``.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if "method" in data and data["method"] != cls.method:
            raise ValueError(f"{source}: method={data['method']!r}, but {cls.__name__} is for {cls.method!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"method"})
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
    picked = _parse_layer_string(spec, num_layers) if isinstance(spec, str) else list(spec)
    resolved = []
    for i in picked:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise ValueError(f"layers={spec!r}: layer {i} is out of range for a model with {num_layers} blocks")
        resolved.append(j)
    if not resolved:
        raise ValueError(f"layers={spec!r} selects no layer of a model with {num_layers} blocks")
    return sorted(set(resolved))


def _parse_layer_string(spec: str, num_layers: int) -> list[int]:
    s = spec.strip()
    if s.startswith("last:"):
        return list(range(max(0, num_layers - int(s[5:])), num_layers))
    if s == "top-half":
        return list(range(num_layers // 2, num_layers))
    if s == "bottom-half":
        return list(range(num_layers // 2))
    picked: list[int] = []
    for part in s.split(","):
        m = re.match(r"^\s*(-?\d+)\s*(?:[-:]\s*(-?\d+))?\s*$", part)
        if m is None:
            raise ValueError(f"layers={spec!r}: cannot read {part!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        picked.extend(range(lo, hi + 1))
    return picked
