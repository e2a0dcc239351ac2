"""The decode engine's batched cache: rows left-padded so every row's real tokens end at the last column."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["check_cache", "left_mask", "left_pad", "zero_padding"]


def left_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) attention mask: 1 on each row's last ``lengths[i]`` columns."""
    return (torch.arange(width) >= width - lengths[:, None]).long()


def left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` (B, H, T, D) with ``n`` zero columns prepended on the sequence axis."""
    return t if n == 0 else torch.cat([t.new_zeros(*t.shape[:2], n, t.shape[3]), t], dim=2)


def zero_padding(cache: DynamicCache, mask: torch.Tensor) -> None:
    """Zero the keys / values of padded columns: a fully masked pad query may have produced NaN there, and a NaN
    key poisons a row's attention scores even where the mask hides it."""
    pad = ~mask.bool()[:, None, :, None]  # (B, 1, T, 1)
    for layer in cache.layers:
        layer.keys = layer.keys.masked_fill(pad.to(layer.keys.device), 0)
        layer.values = layer.values.masked_fill(pad.to(layer.values.device), 0)


def check_cache(cache: DynamicCache, rows: int, width: int) -> None:
    """Raise TypeError unless the forward filled plain full-attention layers of (rows, H, width, D)."""
    layers = cache.layers
    ok = bool(layers) and all(
        type(layer) is DynamicLayer
        and isinstance(getattr(layer, "keys", None), torch.Tensor)
        and layer.keys.dim() == 4
        and tuple(layer.keys.shape[::2]) == (rows, width)
        for layer in layers
    )
    if not ok:
        kinds = sorted({type(layer).__name__ for layer in layers}) or ["nothing"]
        raise TypeError(
            f"adaptune: the decode engine needs a model that fills a DynamicCache with full-attention layers of "
            f"(batch, heads, tokens, dim); this model left {kinds}"
        )
