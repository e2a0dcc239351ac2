"""Fold an adapter into its hosts' weights for zero-overhead inference, and take it out again exactly.

A method whose adapter is a linear change of its host projection (LoRA: ``W + s·B A``; (IA)³: ``diag(l) W`` or
``W diag(l)``) subclasses ``MergeableAdapter`` and says what the host's parameters become
(``merged_params``). ``merge_adapter`` then, for every place of the adapter, keeps a copy of the host's original
parameters (non-persistent buffers on the adapter, so never saved), writes the merged values into the host's own
``Parameter`` objects in place (optimizers and tied references keep pointing at them) and marks the adapter
``merged``, which makes its ``forward`` an identity so the change is not applied twice. ``unmerge_adapter`` copies
the originals back: bit for bit, whatever the dtype (subtracting the delta again would not be exact).

Host layouts: ``nn.Linear`` (weight (out, in)), Transformers' ``Conv1D`` (weight (in, out), GPT-2) and 1x1
``nn.Conv1d`` without groups (weight (out, in, 1)). Methods compute on the (out, in) matrix; ``to_matrix`` /
``from_matrix`` convert.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.composition import Setup
from ..core.contract import AdapterModule
from ..core.model import active_setup, adapter_modules

__all__ = ["MergeableAdapter", "from_matrix", "merge_adapter", "to_matrix", "unmerge_adapter"]

_FULL = (torch.float32, torch.float64)  # dtypes in which W + ΔW keeps a small ΔW


class MergeableAdapter(AdapterModule):
    """An adapter whose effect is a change of its host projection's parameters."""

    def merged_params(self, host: nn.Module) -> dict[str, torch.Tensor]:
        """Host parameter name (``"weight"``, ``"bias"``) -> its merged value (host layout, computed in fp32)."""
        raise NotImplementedError


def to_matrix(host: nn.Module) -> torch.Tensor:
    """The host's weight as an (out, in) fp32 matrix.

    Raises:
        TypeError: the host is not a projection with a dense weight (grouped convolutions are not).
    """
    w = host.weight
    if isinstance(host, nn.Linear):
        return w.float()
    if type(host).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D: weight (in, out)
        return w.float().T
    if isinstance(host, nn.Conv1d) and host.groups == 1 and tuple(host.kernel_size) == (1,):
        return w.float().squeeze(-1)
    raise TypeError(f"cannot merge into a {type(host).__name__} (needs nn.Linear, Conv1D or an ungrouped 1x1 Conv1d)")


def from_matrix(host: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """An (out, in) matrix in the host weight's layout and dtype (inverse of ``to_matrix``)."""
    if type(host).__name__ == "Conv1D":
        matrix = matrix.T
    elif isinstance(host, nn.Conv1d):
        matrix = matrix.unsqueeze(-1)
    return matrix.to(host.weight.dtype).contiguous()


def _uses_inside_mix(node: Setup, name: str, inside: bool = False) -> bool:
    """True if ``name`` appears under an Average / Fuse / PerExample in ``node`` (merging would apply it to every
    example, at full weight)."""
    if node is None:
        return False
    if isinstance(node, str):
        return inside and node == name
    mixing = inside or type(node).__name__ != "Stack"
    return any(_uses_inside_mix(child, name, mixing) for child in node.children)


def _places(model: nn.Module, name: str) -> list[tuple[nn.Module, MergeableAdapter]]:
    places = []
    for path, module in adapter_modules(model, name).items():
        if not isinstance(module, MergeableAdapter):
            raise TypeError(f"adapter {name!r} ({module.method}) cannot be merged: only LoRA and (IA)³ change weights")
        places.append((model.get_submodule(path[: -len(f".adapters.{name}")]), module))
    return places


def merge_adapter(model: nn.Module, name: str, *, allow_reduced_precision: bool = False) -> None:
    """Fold adapter ``name`` into its hosts' weights; its ``forward`` becomes an identity until unmerged.

    Args:
        model: the model holding the adapter.
        name: a LoRA or (IA)³ adapter.
        allow_reduced_precision: merge into bf16 / fp16 weights too. Refused by default because ``W + ΔW``
            rounded to 8 mantissa bits loses most of a small update, so the merged model's outputs differ from
            the unmerged ones; ``unmerge_adapter`` restores the saved original exactly either way.

    Raises:
        TypeError: the method cannot merge. ValueError: already merged, another adapter is merged into the same
        module, the active setup averages / fuses / selects it per example, or a reduced-precision base.
    """
    places = _places(model, name)
    if any(m.merged for _, m in places):
        raise ValueError(f"adapter {name!r} is already merged")
    if _uses_inside_mix(active_setup(model), name):
        raise ValueError(
            f"adapter {name!r} is used inside {active_setup(model)!r}; a merged adapter applies to every example at "
            "full weight, so it can only be merged while the setup uses it alone or in a Stack"
        )
    for host, _ in places:
        slot = host.get_submodule("adapters")
        if other := [n for n, m in slot.items() if getattr(m, "merged", False)]:
            raise ValueError(f"adapter {other[0]!r} is already merged into the same module; unmerge it first")
        if host.weight.dtype not in _FULL and not allow_reduced_precision:
            raise ValueError(
                f"the base weights are {host.weight.dtype}: W + ΔW rounded to it loses most of a small adapter "
                "update, so merged outputs would differ from unmerged ones; pass allow_reduced_precision=True to "
                "merge anyway (unmerge_adapter still restores the original weights exactly)"
            )
    with torch.no_grad():
        new = [(host, module, module.merged_params(host)) for host, module in places]  # all computed, then written
        for host, module, params in new:
            for key, value in params.items():
                param = getattr(host, key)
                module.register_buffer(f"base_{key}", param.detach().clone(), persistent=False)
                param.copy_(value)
            module.merged = True


def unmerge_adapter(model: nn.Module, name: str) -> None:
    """Restore the host weights saved by ``merge_adapter`` (bit for bit) and make the adapter act again.

    Raises:
        ValueError: the adapter is not merged.
    """
    places = _places(model, name)
    if not all(m.merged for _, m in places):
        raise ValueError(f"adapter {name!r} is not merged")
    with torch.no_grad():
        for host, module in places:
            for key in ("weight", "bias"):
                saved = module._buffers.pop(f"base_{key}", None)
                if saved is not None:
                    getattr(host, key).copy_(saved)
            module.merged = False
