"""Prompt tuning (Lester et al. 2021, https://arxiv.org/abs/2104.08691): learned soft-prompt embeddings before the
input.

A whole-model method (``core.contract.ModelAdapter``): before the model's forward, ``P`` learned vectors are put in
front of the token embeddings and every per-token input is widened to match::

    inputs_embeds   [e_1 .. e_T]            ->  [p_1 .. p_P, e_1 .. e_T]
    attention_mask  [m_1 .. m_T]            ->  [1 .. 1, m_1 .. m_T]
    token_type_ids / labels                 ->  0 / -100 at the P new positions
    position_ids    [q_1 .. q_T] (if given) ->  [0 .. P-1, q_1 + P .. q_T + P]   (what the model computes without them)

``position="after_first"`` inserts the prompt after the first token instead (an encoder's [CLS] stays at 0, where
its pooler / classification head reads); ``"start"`` is peft's layout. Under ``generate`` the prompt goes in at the
prefill only; a decode step (a non-empty cache) just widens the attention mask and shifts the positions, so cache
on and off give the same tokens. Outputs keep the P extra positions (as peft's): logits of the real tokens are
``logits[:, P:]`` (``"start"``).

Decoder sequence classification works through the classification task's last-token pooling (it reads the widened
attention mask: ``training.tasks.last_token``); a bare Transformers decoder classifier would pool from ``input_ids``,
which the model no longer sees. Not supported: ``position="after_first"`` with left padding (the first token is then
a pad).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..core.config import MethodConfig
from ..core.contract import Method, ModelAdapter

if TYPE_CHECKING:
    from ..core.placement import Target

__all__ = ["METHOD", "PromptConfig", "PromptTuning", "cache_length", "widen"]

_INITS = ("random", "vocab")
_POSITIONS = ("start", "after_first")


@dataclass(frozen=True)
class PromptConfig(MethodConfig):
    """Prompt tuning: ``num_virtual_tokens`` learned input embeddings (``placement`` / ``layers`` are not used).

    Attributes:
        num_virtual_tokens: P, the soft prompt's length.
        init: ``"random"`` (N(0, 1), as peft's ``RANDOM``) or ``"vocab"`` (embeddings of P random vocabulary tokens,
            peft's ``SAMPLE_VOCAB``).
        position: ``"start"`` (before every token) or ``"after_first"`` (after the first token, e.g. [CLS]).
    """

    method: ClassVar[str] = "prompt"
    whole_model: ClassVar[bool] = True

    num_virtual_tokens: int = field(default=20, metadata={"help": "length P of the soft prompt"})
    init: str = field(default="random", metadata={"help": "initial prompt", "choices": _INITS})
    position: str = field(default="start", metadata={"help": "where the prompt goes", "choices": _POSITIONS})

    def _validate(self) -> None:
        super()._validate()
        n = self.num_virtual_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise self._bad("num_virtual_tokens", "an integer >= 1")
        if self.init not in _INITS:
            raise self._bad("init", f"one of {_INITS}")
        if self.position not in _POSITIONS:
            raise self._bad("position", f"one of {_POSITIONS}")


def cache_length(inputs: dict[str, Any]) -> int:
    """Token positions already in the cache the model is called with, prefix-tuning prefixes not counted (0: a
    prefill). A cache prefix tuning made for a call with ``use_cache=False`` is never a continuation: ``generate``
    hands back whatever cache the model returned, but then re-feeds the whole sequence."""
    cache = inputs.get("cache", inputs.get("past_key_values"))
    get = getattr(cache, "get_seq_length", None)
    if not callable(get) or getattr(cache, "adaptune_throwaway", False):
        return 0
    return int(get()) - sum(getattr(cache, "adaptune_prefixes", {}).values())


def widen(t: torch.Tensor, fill: torch.Tensor, at: int) -> torch.Tensor:
    """``t`` (B, T, ...) with ``fill`` (B, P, ...) inserted before position ``at``."""
    return torch.cat([t[:, :at], fill.to(device=t.device, dtype=t.dtype), t[:, at:]], dim=1)


class PromptTuning(ModelAdapter):
    """The soft prompt of one adapter: parameter ``prompt`` (P, hidden), peft's ``prompt_embeddings``."""

    method = "prompt"

    def __init__(self, target: Target, config: PromptConfig) -> None:
        super().__init__()
        self.config = config
        self.out_width = target.out_width
        self.prompt = nn.Parameter(torch.randn(config.num_virtual_tokens, target.out_width))

    def attach(self, model: nn.Module) -> None:
        if self.config.init == "vocab":
            weight = model.get_input_embeddings().weight  # type: ignore[operator]
            ids = torch.randint(0, weight.shape[0], (self.config.num_virtual_tokens,))
            with torch.no_grad():
                self.prompt.copy_(weight[ids.to(weight.device)])

    def forward(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        out = dict(inputs)
        n, at = self.config.num_virtual_tokens, 0 if self.config.position == "start" else 1
        past = cache_length(inputs)
        mask, pos = out.get("attention_mask"), out.get("position_ids")
        if past > 0:  # a decode step: the prompt is in the cache already; widen the mask, shift the positions
            if mask is not None and mask.dim() == 2:
                out["attention_mask"] = widen(mask, torch.ones(mask.shape[0], n), at)
            if pos is not None:
                out["position_ids"] = pos + n
            return out
        embeds = out.pop("inputs_embeds", None)
        ids = out.pop("input_ids", None)
        if embeds is None:
            if ids is None:
                raise ValueError("adaptune prompt tuning: the model was called without input_ids or inputs_embeds")
            embeds = model.get_input_embeddings()(ids)  # type: ignore[operator]
        b = embeds.shape[0]
        out["inputs_embeds"] = widen(embeds, self.prompt.to(embeds.dtype).expand(b, -1, -1), at)  # (B, P + T, d)
        for key, fill in (("attention_mask", 1), ("token_type_ids", 0), ("labels", -100)):
            t = out.get(key)
            if isinstance(t, torch.Tensor) and t.dim() == 2:
                out[key] = widen(t, torch.full((b, n), fill), at)
        if pos is not None:  # the prompt's own positions, then the real ones moved up by P
            own = torch.arange(n, device=pos.device).expand(pos.shape[0], n) + (pos[:, :1] + 1 if at else 0)
            out["position_ids"] = torch.cat([pos[:, :at], own, pos[:, at:] + n], dim=1)
        return out

    def extra_repr(self) -> str:
        return f"virtual_tokens={self.config.num_virtual_tokens}, width={self.out_width}, at={self.config.position}"


def build(target: Target, config: PromptConfig) -> PromptTuning:
    """The soft prompt ``config`` puts at the model (``target`` is placement's one ``"model"`` target)."""
    return PromptTuning(target, config)


METHOD = Method("prompt", PromptConfig, build, modes=("model",))
