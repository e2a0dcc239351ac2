"""Last-token pooling from the attention mask, for decoder sequence classifiers.

Transformers' decoder classifiers (``*ForSequenceClassification`` with a ``score`` head: Llama / SmolLM2, GPT-2,
Gemma 3, Qwen, Mistral...) apply ``score`` at every position, then keep each row's rightmost token whose *id* is
not ``config.pad_token_id``. That picks the wrong token when

- a real token has the pad id: a tokenizer without a pad token pads with EOS (``load_tokenizer``), and a text may
  end in EOS; the token before it is pooled;
- the config's pad id is not the tokenizer's (a checkpoint whose config names another pad): with right padding a
  padding position is pooled;

and GPT-2's absolute position table puts every real token of a left-padded row at a shifted position.

Two hooks on the base model (``model.base_model``) fix all three, without touching the model's code::

    pre-hook   position_ids = cumsum(attention_mask) - 1      (if none given): the positions the row has unpadded
    hook       h[b, t] = h[b, last_b]  for every t            last_b = the rightmost position with attention_mask 1
               -> score(h) is one vector per row, so whichever position Transformers then picks, it is the last
                  real token's (a view: no copy of h)

Both read the ``attention_mask`` the base model is called with, so methods that widen it before the base model runs
(prompt tuning: P virtual tokens in front) pool the right token too. Without a mask every token counts as real.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

__all__ = ["pool_last_token", "pools_last_token"]


def _pads_by_token_id(model: nn.Module) -> bool:
    # Every Transformers classifier that pools by the pad id names its head ``score`` (encoders say ``classifier``
    # and read position 0; BART-style heads pool EOS by id inside ``classification_head``).
    return isinstance(getattr(model, "score", None), nn.Linear) and getattr(model, "base_model", model) is not model


def pools_last_token(model: nn.Module) -> bool:
    """True when ``pool_last_token`` hooks are on ``model``'s base model."""
    base = getattr(model, "base_model", None)
    return isinstance(base, nn.Module) and _pool_hidden in base._forward_hooks.values()


def pool_last_token(model: nn.Module) -> bool:
    """Make a decoder classifier pool each row's last real token by its attention mask (see the module docstring).

    A no-op (False) for models that do not pool by the pad id, and when the hooks are already there.

    Returns:
        True when the hooks were added.
    """
    if not _pads_by_token_id(model) or pools_last_token(model):
        return False
    base = model.base_model
    if "position_ids" in _signature(type(base)).parameters:
        base.register_forward_pre_hook(_unpadded_positions, with_kwargs=True)
    base.register_forward_hook(_pool_hidden, with_kwargs=True)
    return True


@functools.cache
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)  # per class, once: the hooks run on every forward


def _argument(module: nn.Module, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Argument ``name`` of a call to ``module``, passed by keyword or by position."""
    if name in kwargs or not args:
        return kwargs.get(name)
    return _signature(type(module)).bind_partial(module, *args, **kwargs).arguments.get(name)


def _unpadded_positions(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    mask = _argument(module, "attention_mask", args, kwargs)
    if _argument(module, "position_ids", args, kwargs) is not None or not _is_padding_mask(mask):
        return None
    ids = _argument(module, "input_ids", args, kwargs)
    embeds = _argument(module, "inputs_embeds", args, kwargs)
    length = ids.shape[1] if ids is not None else embeds.shape[1] if embeds is not None else None
    if length != mask.shape[1]:  # a mask that also covers a cache / prefix: positions are the model's business
        return None
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T); left padding all at 0, masked anyway
    return args, {**kwargs, "position_ids": positions}


def _pool_hidden(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    hidden = output[0]  # last_hidden_state, (B, T, H) for a ModelOutput and a tuple alike
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        return None
    b, t, _ = hidden.shape
    mask = _argument(module, "attention_mask", args, kwargs)
    if _is_padding_mask(mask):
        mask = mask[:, -t:]  # a mask over cache / prefix + the T new positions: the new ones are last
        if mask.shape[0] != b and b % mask.shape[0] == 0:  # Parallel(...) repeats the batch k times, in order
            mask = mask.repeat(b // mask.shape[0], 1)
        steps = torch.arange(t, device=hidden.device)
        last = (steps * (mask.to(hidden.device) != 0)).argmax(-1)  # (B,) rightmost real position
    else:
        last = torch.full((b,), t - 1, device=hidden.device)  # no mask: every token is real
    pooled = hidden[torch.arange(b, device=hidden.device), last]  # (B, H)
    spread = pooled.unsqueeze(1).expand(b, t, pooled.shape[-1])  # (B, T, H), one vector per row
    if isinstance(output, tuple):
        return (spread, *output[1:])
    output["last_hidden_state"] = spread  # a ModelOutput: item and attribute together
    return output


def _is_padding_mask(mask: Any) -> bool:
    return isinstance(mask, torch.Tensor) and mask.dim() == 2
