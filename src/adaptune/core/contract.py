"""The written contract between the core and adapter methods, and the registry that joins them.

The core (placement, slot, composition, model API, native save/load) never names a method's classes. It sees:

- ``MethodConfig`` (``core.config``): where an adapter goes, plus the method's own fields;
- ``AdapterModule``: one method's adapter at one place (one ``Target``);
- ``MixerModule``: a layer that combines several adapters' deltas at one place (AdapterFusion);
- ``Method``: the registry entry joining a method name, its config class and how to build its module.

What a new method provides (one file under ``adaptune/methods/`` plus one ``register_method`` line in
``adaptune/methods/__init__.py``):

1. A frozen dataclass config subclassing ``MethodConfig`` with ``method: ClassVar[str] = "<name>"``, its own
   fields (with defaults, so files from older versions load) and a ``_validate`` that calls ``super()``.
   ``to_dict`` / ``from_dict`` are inherited; ``to_dict`` writes ``method`` so a saved file says which method
   reads it back.
2. An ``AdapterModule`` subclass built from ``(target, config)``: it sets ``method``, ``config``, ``mode``
   (``target.mode``) and ``out_width`` (``target.out_width``), and implements ``forward`` as described on the
   class. Its parameters are what gets trained and saved (its ``state_dict``, keys unchanged); nothing else
   of the model is touched.
3. ``METHOD = Method("<name>", TheConfig, build)`` where ``build(target, config)`` returns the module, and
   ``modes`` lists the slot modes the method can run in (``add_adapter`` refuses the others with a clear error).

Everything else (add / activate / train / delete / plan, composition, AdapterDrop, save / load with base
checks) then works for the new method unchanged.

Methods that change the model's *inputs* rather than a sublayer's output (prompt tuning prepends embeddings,
prefix tuning pre-fills the key/value cache) set ``whole_model = True`` on their config. Placement then gives
them one ``Target`` with mode ``"model"`` at the model itself (module ``""``, ``Target.shape`` the measured
sizes); their module subclasses ``ModelAdapter``. The slot at the model root runs them in a forward pre-hook on
the whole model's keyword arguments, alone or in a ``Stack`` (in order); other blocks holding them are refused
at the forward with the rule in the message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .config import MethodConfig

if TYPE_CHECKING:
    from .placement import Target

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "MODES",
    "AdapterModule",
    "Method",
    "MixerModule",
    "ModelAdapter",
    "build_adapter",
    "config_from_dict",
    "default_config",
    "method_for",
    "method_named",
    "register_method",
    "share_parameters",
]

# The slot modes (how the slot calls an adapter; ``Target.mode``).
MODES: tuple[str, ...] = ("output", "parallel", "post_ln", "input", "model")
# The method of a config written before configs named their method, and of ``add_adapter(model, name)``.
DEFAULT_METHOD = "bottleneck"


class AdapterModule(nn.Module):
    """Base class of every adapter method's per-place module.

    Where it hooks is decided by placement (``core.placement.Target``); the slot on the target module calls
    the adapter according to ``mode``:

    - ``"output"``: ``forward(h)`` with ``h`` the host module's output (..., out_width);
    - ``"parallel"``: ``forward(x, residual=h)`` with ``x`` the sublayer's input (..., in_width) and ``h`` its
      output (..., out_width);
    - ``"post_ln"``: the host is a closing LayerNorm ``LN(v)``; ``forward(LN(v), residual=v)`` and the slot
      re-normalises the result;
    - ``"input"``: ``forward(x)`` with ``x`` the host's input (..., in_width), before the host runs; the host then
      runs on the result ((IA)³'s scaling of the FFN intermediate activation).

    Tensors arrive channels-last ``(..., width)`` whatever the host's layout (the slot transposes
    channels-first hosts such as 1x1 ``nn.Conv1d``).

    Subclasses set ``method`` (the registry name) and, in ``__init__``, ``config`` (their ``MethodConfig``),
    ``mode`` and ``out_width``. They must not change state inside ``forward`` (no counters, no decays, no
    in-place edits of inputs), and a freshly built adapter should be an exact identity (its delta zero) so
    adding one leaves the model's outputs unchanged.

    ``merged`` is True while a method has folded the adapter into its host's weights (LoRA, (IA)³); its
    ``forward`` is then an identity, and ``delete_adapter`` refuses it until it is unmerged.
    """

    method: ClassVar[str] = ""
    config: MethodConfig
    mode: str
    out_width: int
    merged: bool = False

    def forward(  # pragma: no cover - the contract; subclasses implement it
        self, x: torch.Tensor, residual: torch.Tensor | None = None, delta_only: bool = False
    ) -> torch.Tensor:
        """``residual + delta(x)`` (``residual`` defaults to ``x``) in the residual's dtype; with ``delta_only``
        the delta alone (..., out_width), which fusion attends over and averaging mixes."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        """Parameters this module adds to the model (``plan`` reports it before anything is attached)."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def grouped(
        cls, adapters: list[AdapterModule], x: torch.Tensor, residual: torch.Tensor, group: torch.Tensor
    ) -> torch.Tensor | None:
        """Optional batched form of a ``PerExample`` batch: row ``b`` gets ``adapters[group[b]](x[b], residual[b])``
        in a few large ops instead of one small forward per adapter (what a server mixing many adapters spends
        its time on). ``None``: not available for these adapters (the slot then runs them one group at a time).
        The adapters are all of this class and mode; nothing needs gradients."""
        return None


class ModelAdapter(AdapterModule):
    """Base class of adapters of the whole model's inputs (slot mode ``"model"``): prompt and prefix tuning.

    One module per adapter, at ``<model>.adapters.<name>``. The root slot calls ``adapter(model, inputs)`` before
    the model's own forward with its keyword arguments (a positional first argument becomes ``input_ids``), and
    the model then runs on the returned dict. ``forward`` must return a new dict (never edit ``inputs`` in place),
    handle both a prefill (no cache or an empty one) and a decode step of ``generate`` (a non-empty cache: the
    virtual positions are already in it), and keep ``attention_mask`` / ``position_ids`` / ``labels`` aligned with
    what it adds. Such adapters have no identity at init (the new positions change the outputs).
    """

    mode = "model"

    def forward(  # type: ignore[override]
        self, model: nn.Module, inputs: dict[str, Any]
    ) -> dict[str, Any]:  # pragma: no cover - the contract; subclasses implement it
        """The keyword arguments the model runs on instead of ``inputs``."""
        raise NotImplementedError

    def attach(self, model: nn.Module) -> None:
        """Called once by ``add_adapter`` after the module is built and moved (e.g. to initialise from the
        model's vocabulary). The default does nothing."""


class MixerModule(nn.Module):
    """Base class of layers that combine several adapters at one place (AdapterFusion).

    ``forward(query, deltas, residual)`` takes the query (..., d), the adapters' deltas (..., n, d) and the
    residual to add to, and returns ``(output (..., d), weights (..., n))``.
    """

    def forward(  # pragma: no cover - the contract
        self, query: torch.Tensor, deltas: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class Method:
    """A registered adapter method.

    Attributes:
        name: the registry name, equal to ``config_class.method`` (saved as ``method`` in adapter_config.json).
        config_class: the method's ``MethodConfig`` subclass.
        build: ``(target, config) -> AdapterModule`` for one place.
        modes: the slot modes the method supports (``Target.mode``).
        share: optional; called once with all the modules of one new adapter (in target order, after they are
            built and moved to their device and dtype) so a method can share parameters across places
            (Compacter's rule matrices). The first module keeps a shared tensor in its ``state_dict``; the others
            must not list it, so saved files hold one copy and loading fills it once.
    """

    name: str
    config_class: type[MethodConfig]
    build: Callable[[Target, Any], AdapterModule]
    modes: tuple[str, ...] = MODES
    share: Callable[[list[AdapterModule]], None] | None = None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Make a method known to the core (called once per method, at import of ``adaptune.methods``).

    Raises:
        ValueError: the name is taken by another method, or does not match ``config_class.method``.
    """
    if method.config_class.method != method.name:
        raise ValueError(
            f"method {method.name!r}: its config class {method.config_class.__name__} says "
            f"method={method.config_class.method!r}; they must agree (it is what saved files record)"
        )
    if unknown := sorted(set(method.modes) - set(MODES)):
        raise ValueError(f"method {method.name!r}: unknown modes {unknown}; expected some of {MODES}")
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"adapter method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def method_named(name: Any, source: str = "adapter config") -> Method:
    """The registered method called ``name``.

    Raises:
        ValueError: no such method; names ``source``, the ``method`` field and the known methods.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(
            f"{source}: field 'method' is {name!r}, which is not a known adapter method "
            f"(known: {', '.join(sorted(METHODS)) or 'none'})"
        )
    return METHODS[name]


def method_for(config: Any) -> Method:
    """The registered method whose config class ``config`` is an instance of."""
    for method in METHODS.values():
        if type(config) is method.config_class:
            return method
    for method in METHODS.values():  # a user's subclass of a method's config
        if isinstance(config, method.config_class):
            return method
    raise TypeError(
        f"{type(config).__name__} is not the config of a registered adapter method ({', '.join(METHODS) or 'none'})"
    )


def config_from_dict(data: Any, source: str = "adapter config") -> MethodConfig:
    """Read a config dict written by ``MethodConfig.to_dict``, dispatching on its ``method`` key.

    A dict without ``method`` (written before configs named their method) is a ``DEFAULT_METHOD`` config.

    Raises:
        ValueError: not a dict, an unknown method, or an invalid value; the message starts with ``source``.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    method = method_named(data.get("method", DEFAULT_METHOD), source)
    return method.config_class.from_dict(data, source=source)


def default_config() -> MethodConfig:
    """The config ``add_adapter`` and ``plan`` use when given none: ``DEFAULT_METHOD``'s defaults."""
    return method_named(DEFAULT_METHOD, "default adapter config").config_class()


def build_adapter(target: Target, config: MethodConfig) -> AdapterModule:
    """The adapter module ``config`` puts at ``target``.

    Raises:
        ValueError: the method cannot run in the target's mode.
    """
    method = method_for(config)
    if target.mode not in method.modes:
        raise ValueError(
            f"adapter method {method.name!r} cannot run at {target.module} in mode {target.mode!r} "
            f"(it supports {', '.join(method.modes)}); pick another placement"
        )
    return method.build(target, config)


def share_parameters(modules: list[AdapterModule], config: MethodConfig) -> None:
    """Let ``config``'s method share parameters across one adapter's modules (``Method.share``), if it does."""
    method = method_for(config)
    if method.share is not None and modules:
        method.share(modules)
