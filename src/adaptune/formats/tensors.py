"""Tensor plumbing shared by every saved format: read a safetensors file, copy checked tensors into a model,
collect module state for saving. Below native, fusion and AdapterHub formats, importing none of them."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

__all__ = ["copy_checked_tensor", "copy_head", "module_tensors", "read_tensors"]


def module_tensors(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """``<path>.<key>`` -> a contiguous CPU copy of each module's state, ready for ``save_file``."""
    return {f"{p}.{k}": v.detach().contiguous().cpu() for p, m in modules.items() for k, v in m.state_dict().items()}


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a missing or corrupt file is an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable or corrupt safetensors file ({err})") from None


def copy_checked_tensor(target: torch.Tensor, value: torch.Tensor, key: str, src: Path) -> None:
    """Copy ``value`` into ``target`` after checking shape, floating dtype and finiteness (errors name ``src``)."""
    if tuple(value.shape) != tuple(target.shape):
        raise ValueError(f"{src}: tensor {key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{src}: tensor {key} has dtype {value.dtype}, expected a floating-point dtype")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{src}: tensor {key} holds NaN or infinite values")
    target.copy_(value.to(dtype=target.dtype, device=target.device))


def copy_head(model: nn.Module, tensors: dict[str, torch.Tensor], src: Path) -> None:
    """Load saved task-head tensors into ``model`` by state-dict key; keys it lacks are skipped with a warning."""
    state = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    unknown = sorted(k for k in tensors if k not in state)
    if unknown:
        # A model without that head (a bare BertModel, another task class) still takes the adapter.
        warnings.warn(
            f"{src}: {type(model).__name__} has no place for head tensors {unknown[:3]}; head not loaded", stacklevel=3
        )
        tensors = {k: v for k, v in tensors.items() if k in state}
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise ValueError(
                f"{src}: head tensor {key} has shape {tuple(value.shape)}, the model's has "
                f"{tuple(state[key].shape)} (was the head trained with a different number of labels?)"
            )
    with torch.no_grad():
        for key, value in tensors.items():
            copy_checked_tensor(state[key], value, key, src)
