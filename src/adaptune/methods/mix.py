"""Mixes of methods as ONE named adapter: MAM (He et al. 2022, https://arxiv.org/abs/2110.04366) and a
UniPELT-like mix (Mao et al. 2022, https://arxiv.org/abs/2110.07577), or any union of method configs.

A ``MixConfig`` lists member configs (``parts``). Placement unions their places (``core.placement``): where
members meet at one module they run there one after the other, inside one ``Mix`` module::

    output / input mode:   h ─ part_a ─ part_b ─> h'            (each adds its own delta)
    parallel mode:         h' = h + delta_a(x) + delta_b(x)     (x: what the host reads)
    model mode:            kwargs ─ prompt / prefix part ─ ... ─> kwargs'

The whole mix saves, loads, activates, composes and deletes under one name; each member keeps its own math and
parameters (under ``parts.<i>.``, ``i`` its index in ``parts``). Members meeting at a LayerNorm in ``post_ln``
mode cannot be chained (each re-normalises), so such a mix is refused when built.

Presets: ``MixConfig.mam()`` = prefix tuning + a parallel bottleneck beside every FFN (scaling 4);
``MixConfig.unipelt()`` = LoRA on q/v + prefix tuning + a gated bottleneck after every FFN; ``MixConfig.madx()`` =
a MAD-X language adapter: a pfeiffer bottleneck (reduction 2) + an invertible coupling on the embeddings
(``methods.invertible``). UniPELT also gates
its LoRA and prefix members; adaptune's LoRA and prefix have no gate, so this mix gates the bottleneck only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..core.config import MethodConfig
from ..core.contract import AdapterModule, Method, ModelAdapter, build_adapter, config_from_dict, share_parameters
from .bottleneck import AdapterConfig
from .invertible import InvertibleConfig
from .lora import LoraConfig
from .prefix import PrefixConfig

if TYPE_CHECKING:
    from ..core.placement import Target

__all__ = ["METHOD", "MIX_PRESETS", "Mix", "MixConfig", "MixModel"]


def _mam() -> tuple[MethodConfig, ...]:
    # He et al.'s best mix: prefix tuning on attention + a scaled parallel adapter beside the FFN.
    return PrefixConfig(), AdapterConfig.parallel()


def _unipelt() -> tuple[MethodConfig, ...]:
    return LoraConfig(), PrefixConfig(prefix_length=10), AdapterConfig.pfeiffer(gate=True)


def _madx() -> tuple[MethodConfig, ...]:
    # A MAD-X language adapter: pfeiffer bottleneck (reduction 2, as in the paper) + the invertible coupling.
    return AdapterConfig.pfeiffer(reduction_factor=2), InvertibleConfig()


MIX_PRESETS: dict[str, Callable[[], tuple[MethodConfig, ...]]] = {"mam": _mam, "unipelt": _unipelt, "madx": _madx}


@dataclass(frozen=True)
class MixConfig(MethodConfig):
    """Several methods as one adapter.

    Attributes:
        parts: the member configs (at least two; no mix inside a mix). Given as configs or as the dicts
            ``to_dict`` writes. Each member says where it goes; the mix's own ``placement`` / ``layers`` /
            ``target_modules`` are not used and must stay unset.
        preset: ``"mam"``, ``"unipelt"`` or ``"madx"`` (``MIX_PRESETS``): builds ``parts`` when none are given (default
            ``"mam"``); kept as a label when they are.
    """

    method: ClassVar[str] = "mix"

    parts: tuple[Any, ...] = ()
    preset: str | None = field(
        default=None,
        metadata={"help": "members when none are given: mam | unipelt | madx", "choices": tuple(MIX_PRESETS)},
    )

    def __post_init__(self) -> None:
        parts = self.parts
        if isinstance(parts, (list, tuple)) and not parts:
            if self.preset is not None and self.preset not in MIX_PRESETS:
                raise self._bad("preset", f"one of {tuple(MIX_PRESETS)}")
            object.__setattr__(self, "preset", self.preset or "mam")
            parts = MIX_PRESETS[self.preset]()
        if isinstance(parts, (list, tuple)):
            parts = tuple(
                config_from_dict(p, f"MixConfig.parts[{i}]") if isinstance(p, dict) else p for i, p in enumerate(parts)
            )
        object.__setattr__(self, "parts", parts)
        super().__post_init__()

    def _validate(self) -> None:
        super()._validate()
        if not isinstance(self.parts, tuple) or len(self.parts) < 2:
            raise self._bad("parts", "a list of at least two method configs")
        for i, part in enumerate(self.parts):
            if not isinstance(part, MethodConfig):
                raise ValueError(f"MixConfig.parts[{i}]={part!r}: expected a method config (or its dict)")
            if part.components():
                raise ValueError(f"MixConfig.parts[{i}]: a mix cannot hold another mix; list its members instead")
        if (self.placement, self.layers, self.target_modules) != ("ffn", None, None):
            raise ValueError(
                "MixConfig: placement / layers / target_modules belong to each member (parts[i]), not to the mix"
            )

    def components(self) -> tuple[MethodConfig, ...]:
        return self.parts

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "preset": self.preset, "parts": [p.to_dict() for p in self.parts]}

    @classmethod
    def mam(cls) -> MixConfig:
        """MAM adapter: prefix tuning (30 positions) + a parallel bottleneck beside each FFN (scaling 4)."""
        return cls(preset="mam")

    @classmethod
    def madx(cls) -> MixConfig:
        """MAD-X language adapter: a pfeiffer bottleneck (reduction 2) + an invertible NICE coupling on the
        embeddings (inverted before the LM head)."""
        return cls(preset="madx")

    @classmethod
    def unipelt(cls) -> MixConfig:
        """UniPELT-like: LoRA (q, v) + prefix tuning (10) + a gated pfeiffer bottleneck (the only gated member)."""
        return cls(preset="unipelt")


def _members(target: Target, config: MixConfig) -> nn.ModuleDict:
    if target.mode == "post_ln" and len(target.parts) > 1:
        raise ValueError(
            f"mix: members {list(target.parts)} meet at the LayerNorm {target.module} (post_ln mode), where they "
            "cannot run one after the other (each re-normalises); place one of them elsewhere"
        )
    plain = dataclasses.replace(target, parts=())
    return nn.ModuleDict({str(i): build_adapter(plain, config.parts[i]) for i in target.parts})


class Mix(AdapterModule):
    """The members of one mix that meet at one module, run one after the other (modes output / parallel / input /
    post_ln with one member)."""

    method = "mix"

    def __init__(self, target: Target, config: MixConfig) -> None:
        super().__init__()
        self.config = config
        self.mode = target.mode
        self.out_width = target.out_width
        self.parts = _members(target, config)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, delta_only: bool = False) -> torch.Tensor:
        base = x if residual is None else residual
        if self.mode == "parallel":  # every member reads the host's input and adds to the running output
            out = base
            for part in self.parts.values():
                out = part(x, residual=out)
        else:  # output / input / post_ln: each member adapts what the one before wrote
            out = x
            for part in self.parts.values():
                out = part(out, residual=residual if out is x else None)
        return out - base if delta_only else out


class MixModel(ModelAdapter):
    """The whole-model members of one mix (prompt / prefix tuning), applied to the model's inputs in order."""

    method = "mix"

    def __init__(self, target: Target, config: MixConfig) -> None:
        super().__init__()
        self.config = config
        self.out_width = target.out_width
        self.parts = _members(target, config)

    def forward(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        for part in self.parts.values():
            inputs = part(model, inputs)
        return inputs

    def attach(self, model: nn.Module) -> None:
        for part in self.parts.values():
            assert isinstance(part, ModelAdapter)  # members at the model target run in model mode
            part.attach(model)


def build(target: Target, config: MixConfig) -> AdapterModule:
    """The members of ``config`` that placement put at ``target`` (``target.parts``), in one module."""
    return MixModel(target, config) if target.mode == "model" else Mix(target, config)


def share(modules: list[AdapterModule]) -> None:
    """Let each member share parameters across its own places (Compacter's rule matrices)."""
    config = modules[0].config
    assert isinstance(config, MixConfig)
    for i, part in enumerate(config.parts):
        members = [m.parts[str(i)] for m in modules if str(i) in m.parts]  # type: ignore[index,operator]
        share_parameters(members, part)


METHOD = Method("mix", MixConfig, build, share=share)
