"""Add, activate, train, inspect and remove adapters on any ``nn.Module`` (Hugging Face models included).

All state lives in the model's own modules (``AdapterSlot`` children), never in globals or in attributes
added to the model object, so ``copy.deepcopy``, ``torch.save`` and ``state_dict`` see everything.
Transformers' own PEFT methods (``model.add_adapter`` ...) are left untouched: these are functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .composition import Parallel, Stack, adapter_names, validate
from .config import MethodConfig
from .contract import AdapterModule, MixerModule, ModelAdapter, build_adapter, default_config, share_parameters
from .parallel import install_parallel, remove_parallel
from .placement import Target, find_targets
from .slot import AdapterSlot

__all__ = [
    "DEFAULT_HEADS",
    "ParamSummary",
    "Plan",
    "active_adapters",
    "active_setup",
    "adapter_config",
    "adapter_modules",
    "adapter_slots",
    "adapter_to_fill",
    "add_adapter",
    "check_adapters_fire",
    "delete_adapter",
    "head_modules",
    "list_adapters",
    "plan",
    "set_active",
    "set_adapter_drop",
    "train_adapter",
    "trainable_summary",
]

# Task heads newly initialised on top of a pretrained body; they train with the adapter.
DEFAULT_HEADS: tuple[str, ...] = ("classifier", "qa_outputs", "score")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def adapter_slots(model: nn.Module) -> dict[str, AdapterSlot]:
    """Host path -> slot, in module order."""
    return {
        n[: -len(".adapters")] if n != "adapters" else "": m
        for n, m in model.named_modules()
        if isinstance(m, AdapterSlot)
    }


def list_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters in ``model``, in the order they were first attached."""
    names: dict[str, None] = {}
    for slot in adapter_slots(model).values():
        names.update(dict.fromkeys(slot.adapters()))
    return list(names)


def adapter_modules(model: nn.Module, name: str) -> dict[str, AdapterModule]:
    """Full module path -> ``AdapterModule`` for one adapter (``<host>.adapters.<name>``)."""
    found = {
        f"{host}.adapters.{name}" if host else f"adapters.{name}": s[name]
        for host, s in adapter_slots(model).items()
        if isinstance(s._modules.get(name), AdapterModule)
    }
    if not found:
        raise KeyError(f"no adapter named {name!r} in the model; adapters: {list_adapters(model)}")
    return found


def adapter_config(model: nn.Module, name: str) -> MethodConfig:
    """The config an adapter was added with."""
    return next(iter(adapter_modules(model, name).values())).config


def adapter_targets(model: nn.Module, name: str) -> list[str]:
    """Dotted paths of the host modules an adapter is attached to."""
    return [host for host, s in adapter_slots(model).items() if isinstance(s._modules.get(name), AdapterModule)]


def add_adapter(
    model: nn.Module,
    name: str,
    config: MethodConfig | None = None,
    *,
    activate: bool = True,
    dtype: torch.dtype = torch.float32,
) -> list[Target]:
    """Attach a new adapter ``name`` to ``model`` (in place) and, by default, make it the active one.

    Args:
        model: any ``nn.Module``; Transformers models are found by structure (see ``placement``).
        name: a Python identifier, unique in the model.
        config: what and where: any registered method's config (``MethodConfig`` subclass); defaults to
            ``AdapterConfig.pfeiffer()`` (a bottleneck adapter after each FFN).
        activate: make ``name`` the only active adapter.
        dtype: the adapter's parameter dtype (its branch runs in it and is cast back to the host's).

    Returns:
        The targets the adapter was attached to.

    Raises:
        ValueError: a bad or taken name, no place found, or a method that cannot run at a target's mode.
    """
    config = config or default_config()
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"adapter name {name!r}: expected a Python identifier ([A-Za-z_][A-Za-z0-9_]*)")
    if any(name in s for s in adapter_slots(model).values()):  # adapters and fusion layers share a slot's names
        raise ValueError(f"an adapter or fusion named {name!r} already exists; delete it first or pick another name")
    targets = find_targets(model, config)
    current = active_setup(model)  # new slots join the model-wide active setup
    # Build every module before touching the model: a config that cannot run at some place (a build error) leaves
    # the model exactly as it was, without empty slots or hooks.
    built: list[AdapterModule] = []
    for t in targets:
        host = model.get_submodule(t.module)
        if not isinstance(getattr(host, "adapters", None), (AdapterSlot, type(None))):
            raise ValueError(f"{t.module} already has a child 'adapters' that is not adaptune's; cannot attach")
        ref = next(host.parameters(), None)
        built.append(build_adapter(t, config).to(device=ref.device if ref is not None else None, dtype=dtype))
    for t, adapter in zip(targets, built, strict=True):
        host = model.get_submodule(t.module)
        slot = getattr(host, "adapters", None)
        input_module = model.get_submodule(t.input_module) if t.input_module else None
        if slot is None:
            slot = AdapterSlot(host, input_module, layer=t.layer, channels_first=t.channels_first)
            slot.train(host.training)  # new modules start in training mode; follow the host's mode
            slot.active = current
            host.add_module("adapters", slot)
        elif input_module is not None:
            slot.attach_input_module(input_module)
        if t.mode == "input":
            slot.attach_input_hook(host)
        elif t.mode == "model":
            slot.attach_model_hook(host)
        slot[name] = adapter.train(host.training)
        if isinstance(adapter, ModelAdapter):
            adapter.attach(host)
    share_parameters(built, config)
    if activate:
        set_active(model, [name])
    elif isinstance(current, Parallel):  # new slots may change where the batch must be replicated
        set_active(model, current)
    return targets


@contextmanager
def adapter_to_fill(
    model: nn.Module, name: str, config: MethodConfig, *, activate: bool = True
) -> Iterator[list[Target]]:
    """Add adapter ``name`` (inactive) for a loader to fill with saved weights; yields its targets.

    If the block raises, the adapter is deleted again (nothing half-loaded stays behind); when it completes, the
    adapter becomes the active one if ``activate``.
    """
    targets = add_adapter(model, name, config, activate=False)
    try:
        yield targets
    except BaseException:
        delete_adapter(model, name)
        raise
    if activate:
        set_active(model, [name])


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove an adapter; a slot left without adapters unhooks itself, restoring its host exactly.

    An adapter the active setup uses is refused rather than silently dropping the whole setup: choose a setup
    without it first (``set_active(model, None)`` or the remaining adapters), then delete it. Deleting an
    adapter the active setup does not use keeps the setup.

    Raises:
        KeyError: no adapter ``name``. ValueError: the active setup uses ``name`` (the message names the setup).
    """
    slots = adapter_slots(model)
    if name not in list_adapters(model):
        raise KeyError(f"no adapter named {name!r} in the model; adapters: {list_adapters(model)}")
    if any(getattr(s._modules.get(name), "merged", False) for s in slots.values()):
        raise ValueError(f"adapter {name!r} is merged into the base weights; unmerge it before deleting it")
    using = next((s.active for s in slots.values() if name in adapter_names(s.active)), None)
    if using is not None:
        raise ValueError(
            f"adapter {name!r} is part of the active setup {using!r}; call adaptune.set_active(model, ...) with a "
            f"setup without it (or None for the bare base model) before deleting it"
        )
    for host_path, slot in slots.items():
        if isinstance(slot._modules.get(name), AdapterModule):
            del slot[name]
        if not slot.adapters():
            slot.remove_hooks()
            delattr(model.get_submodule(host_path), "adapters")


def set_active(model: nn.Module, setup: Any) -> None:
    """Choose what runs: an adapter name, a list of names (stacked in order), a composition block
    (``Stack``, ``Fuse``, ``Average``, ``PerExample``, ``Parallel``) or ``None`` for the bare base model.

    A ``Parallel`` also hooks the model so the batch is replicated once per child (``core.parallel``); any other
    setup removes those hooks.

    Raises:
        KeyError: an unknown adapter. ValueError: an invalid nesting or a Fuse without its fusion layer.
    """
    if isinstance(setup, (list, tuple)):
        setup = setup[0] if len(setup) == 1 else (Stack(*setup) if setup else None)
    if setup is not None:
        validate(setup, list_adapters(model))
        _check_fusions(model, setup)
    slots = adapter_slots(model)
    remove_parallel([getattr(slot, "parallel_router", None) for slot in slots.values()])  # older pickles: none
    for slot in slots.values():
        slot.active = setup
    router = None
    if isinstance(setup, Parallel):  # replicate the batch k times before the first adapted place
        router = install_parallel(model, setup, [slot.layer for slot in slots.values() if slot.running()])
    for slot in slots.values():
        slot.parallel_router = router


def _check_fusions(model: nn.Module, node: Any) -> None:
    """Raise ValueError if a ``Fuse`` anywhere in ``node`` has no fusion layer in the model."""
    from .composition import Block, Fuse

    if isinstance(node, Fuse):
        have = {n for s in adapter_slots(model).values() for n, m in s.items() if isinstance(m, MixerModule)}
        if node.name not in have:
            raise ValueError(f"{node!r}: no fusion layer named {node.name!r}; create it with adaptune.add_fusion")
    elif isinstance(node, Block):  # every block keeps its sub-setups in ``children`` (None and names have none)
        for child in node.children:
            _check_fusions(model, child)


def active_setup(model: nn.Module) -> Any:
    """The active composition (a name, a block, or None)."""
    for slot in adapter_slots(model).values():
        return slot.active
    return None


def active_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters the active setup uses (empty when none is active)."""
    return adapter_names(active_setup(model))


def set_adapter_drop(model: nn.Module, skip_first: int = 0, train_prob: float | None = None) -> None:
    """AdapterDrop (Rücklé et al. 2021): skip the adapters of blocks ``< skip_first``.

    Args:
        model: the model.
        skip_first: blocks whose adapters are affected (0 turns AdapterDrop off).
        train_prob: ``None`` skips those adapters always (inference speed: backward also stops earlier);
            a probability drops each of them at random per forward while training only (robustness), and keeps
            them at inference.
    """
    for slot in adapter_slots(model).values():
        affected = 0 <= slot.layer < skip_first
        slot.skip = affected and train_prob is None
        slot.drop_prob = float(train_prob) if affected and train_prob is not None else 0.0


def head_modules(model: nn.Module, heads: Iterable[str] = DEFAULT_HEADS) -> dict[str, nn.Module]:
    """Task-head modules present in ``model`` among ``heads`` (dotted paths or top-level names)."""
    found = {}
    for h in heads:
        try:
            found[h] = model.get_submodule(h)
        except AttributeError:
            continue
    return found


def train_adapter(
    model: nn.Module, names: str | Iterable[str], heads: Iterable[str] = DEFAULT_HEADS, setup: Any = None
) -> ParamSummary:
    """Freeze everything except the named adapters and the task head, and activate them.

    Args:
        model: the model holding the adapters.
        names: adapters to train.
        heads: module paths of task heads that train too; those absent from the model are skipped.
        setup: the active setup while training (default: ``names`` stacked in order), e.g.
            ``Stack("lang_en", "task")`` to train ``task`` on top of a frozen language adapter.

    Returns:
        The trainable-parameter summary after freezing.
    """
    names = [names] if isinstance(names, str) else list(names)
    set_active(model, setup if setup is not None else names)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        for module in adapter_modules(model, name).values():
            module.requires_grad_(True)
    embeddings = _input_embedding_weight(model)
    for path, head in head_modules(model, heads).items():
        if embeddings is not None and any(p is embeddings for p in head.parameters()):
            raise ValueError(
                f"head {path!r} shares its weight with the input embeddings; training it would change the base"
            )
        head.requires_grad_(True)
    return trainable_summary(model)


def _input_embedding_weight(model: nn.Module) -> torch.Tensor | None:
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        return None
    return getattr(emb, "weight", None)


@dataclass(frozen=True)
class ParamSummary:
    """Trainable vs total parameter counts."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        """Trainable share of all parameters, in percent."""
        return 100.0 * self.trainable / max(1, self.total)

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} / {self.total:,} parameters ({self.percent:.3f}%)"


def trainable_summary(model: nn.Module) -> ParamSummary:
    """Count trainable and total parameters (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    return ParamSummary(
        sum(p.numel() for p in seen.values() if p.requires_grad), sum(p.numel() for p in seen.values())
    )


@dataclass(frozen=True)
class Plan:
    """Where a config would put adapters and what they would cost, without touching the model."""

    targets: list[Target]
    adapter_params: list[int]
    base_params: int

    @property
    def total_adapter_params(self) -> int:
        return sum(self.adapter_params)

    @property
    def percent(self) -> float:
        """Adapter parameters as a percentage of base + adapter parameters."""
        return 100.0 * self.total_adapter_params / max(1, self.base_params + self.total_adapter_params)

    def table(self) -> str:
        """A plain-text table: layer, location, mode, module, width, parameters."""
        rows = [f"{'layer':>5}  {'location':<9} {'mode':<8} {'width':>6} {'params':>9}  module"]
        for t, n in zip(self.targets, self.adapter_params, strict=True):
            width = str(t.out_width) if t.in_width == t.out_width else f"{t.in_width}>{t.out_width}"
            rows.append(f"{t.layer:>5}  {t.location:<9} {t.mode:<8} {width:>6} {n:>9,}  {t.module}")
        rows.append(
            f"{len(self.targets)} places, {self.total_adapter_params:,} adapter parameters "
            f"= {self.percent:.3f}% of {self.base_params + self.total_adapter_params:,}"
        )
        return "\n".join(rows)


def plan(model: nn.Module, config: MethodConfig | None = None) -> Plan:
    """Where ``config`` would put adapters in ``model`` and how many parameters each adds."""
    config = config or default_config()
    targets = find_targets(model, config)
    modules = [build_adapter(t, config) for t in targets]
    share_parameters(modules, config)  # a parameter shared across places counts once, at the first
    counts = [m.num_parameters() for m in modules]
    return Plan(targets, counts, trainable_summary(model).total)


def check_adapters_fire(model: nn.Module, *args: object, **kwargs: object) -> list[str]:
    """Run one forward with the given inputs and return the paths of active adapters that did not run.

    A hook on a module the host bypasses (e.g. ``F.linear(self.proj.weight, ...)``) never fires; this names
    such silent adapters. An empty list means every active adapter ran at least once.
    """
    seen: set[str] = set()
    handles = []
    for host, slot in adapter_slots(model).items():
        for name in slot.running():
            path = f"{host}.adapters.{name}"
            handles.append(slot[name].register_forward_hook(lambda *_, p=path: seen.add(p)))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    expected = [f"{host}.adapters.{n}" for host, s in adapter_slots(model).items() for n in s.running()]
    return [p for p in expected if p not in seen]
