"""Prefix tuning (Li & Liang 2021, https://arxiv.org/abs/2101.00190): learned key/value prefixes in every attention
layer.

A whole-model method (``core.contract.ModelAdapter``) that goes through Transformers 5's own cache path: before the
model's forward, a ``DynamicCache`` is pre-filled with ``P`` learned key and value vectors per layer and the
attention mask is widened by ``P`` ones, so every query attends to the prefix as if ``P`` tokens came first::

    prefix (P, L·2·H_kv·d)  -view->  layer l: keys [:, 2l], values [:, 2l + 1]  ->  cache.update(k, v, l)
    attention_mask [m_1 .. m_T] -> [1 .. 1, m_1 .. m_T];   position_ids (if given) + P

The prefix layout is peft's ``prompt_embeddings`` (P, num_layers·2·token_dim). While training, ``reparam=True``
computes the prefix from a small embedding through an MLP (``hidden -> reparam_hidden -> tanh -> L·2·H_kv·d``,
peft's ``prefix_projection``), which trains more stably; ``fold_prefix`` replaces it by the plain tensor it computes
(the form to publish and serve; what peft saves). Under ``generate`` the prefix goes into the cache at the prefill
only; decode steps widen the mask and shift positions (cache on and off give the same tokens). Keys are inserted
after the model's position encoding (they carry no RoPE), as in peft.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..core.config import MethodConfig
from ..core.contract import Method, ModelAdapter
from .prompt import cache_length, widen

if TYPE_CHECKING:
    from ..core.placement import ModelShape, Target

__all__ = ["METHOD", "PrefixConfig", "PrefixTuning", "fold_prefix"]


@dataclass(frozen=True)
class PrefixConfig(MethodConfig):
    """Prefix tuning: ``prefix_length`` key/value vectors per attention layer (``placement`` / ``layers`` unused).

    Attributes:
        prefix_length: P, the number of prefix positions.
        reparam: compute the prefix through an MLP while training (``fold_prefix`` removes it).
        reparam_hidden: the MLP's hidden width.
        shift_positions: the tokens' positions start after the prefix (P, as peft and the cache put them); False
            keeps them at 0..T-1 as if there were no prefix (AdapterHub's prefix tuning).
    """

    method: ClassVar[str] = "prefix"
    whole_model: ClassVar[bool] = True

    prefix_length: int = field(default=30, metadata={"help": "prefix positions P per layer"})
    reparam: bool = field(default=True, metadata={"help": "train the prefix through an MLP"})
    reparam_hidden: int = field(default=512, metadata={"help": "hidden width of the reparameterisation MLP"})
    shift_positions: bool = field(default=True, metadata={"help": "token positions start after the prefix"})

    def _validate(self) -> None:
        super()._validate()
        for name in ("prefix_length", "reparam_hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise self._bad(name, "an integer >= 1")
        for name in ("reparam", "shift_positions"):
            if not isinstance(getattr(self, name), bool):
                raise self._bad(name, "true or false")


class PrefixTuning(ModelAdapter):
    """The prefixes of one adapter: ``prefix`` (P, L·2·H_kv·d), or with ``reparam`` ``embedding`` (P, hidden) and
    ``mlp``."""

    method = "prefix"

    def __init__(self, target: Target, config: PrefixConfig) -> None:
        super().__init__()
        assert target.shape is not None  # placement measures the model for whole-model methods
        if not target.shape.cache:
            raise ValueError(
                "prefix tuning feeds its prefixes through Transformers' key/value cache: it needs a model whose "
                "forward takes `cache` and that is not an encoder-decoder (this one is not: DistilBERT, ALBERT, "
                "DeBERTa-v2, ModernBERT, MPNet, SqueezeBERT, T5 and BART are not); use prompt tuning there"
            )
        self.config = config
        self.shape: ModelShape = target.shape
        self.out_width = target.out_width
        s, n = target.shape, config.prefix_length
        width = s.layers * 2 * s.kv_heads * s.head_dim
        if config.reparam:
            self.embedding = nn.Parameter(torch.randn(n, s.hidden))  # as nn.Embedding (peft) initialises
            self.mlp = nn.Sequential(nn.Linear(s.hidden, config.reparam_hidden), nn.Tanh())
            self.mlp.append(nn.Linear(config.reparam_hidden, width))
        else:
            self.prefix = nn.Parameter(torch.randn(n, width))

    def prefix_values(self) -> torch.Tensor:
        """The prefix as one (P, L·2·H_kv·d) tensor (through the MLP when reparameterised)."""
        return self.mlp(self.embedding) if self.config.reparam else self.prefix

    def forward(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        out = dict(inputs)
        n = self.config.prefix_length
        past = cache_length(inputs)
        cache = out.pop("past_key_values", None)
        cache = out.pop("cache", None) or cache
        if getattr(cache, "adaptune_throwaway", False):
            cache = None
        embeds, ids = out.get("inputs_embeds"), out.get("input_ids")
        ref = embeds if embeds is not None else ids
        if ref is None:
            raise ValueError("adaptune prefix tuning: the model was called without input_ids or inputs_embeds")
        b, t = ref.shape[:2]
        if id(self) not in getattr(cache, "adaptune_prefixes", {}):  # a prefill: this prefix is not in the cache yet
            cache = self._prefilled(model, cache, b, ref.device, throwaway=inputs.get("use_cache") is False)
        mask = out.get("attention_mask")
        if mask is None:
            out["attention_mask"] = torch.ones(b, n + past + t, dtype=torch.long, device=ref.device)
        elif mask.dim() == 2:
            out["attention_mask"] = widen(mask, torch.ones(b, n), 0)
        if not self.config.shift_positions:  # tokens keep the positions they would have without the prefix
            if out.get("position_ids") is None:
                out["position_ids"] = torch.arange(past, past + t, device=ref.device).unsqueeze(0).expand(b, -1)
        elif out.get("position_ids") is not None:
            out["position_ids"] = out["position_ids"] + n
        out["cache"] = cache
        return out

    def _prefilled(self, model: nn.Module, cache: Any, batch: int, device: torch.device, throwaway: bool) -> Any:
        """``cache`` (a new ``DynamicCache`` when None; ``throwaway`` marks one made for a call without a cache)
        holding this prefix in every layer. The cache records which prefixes it holds (``adaptune_prefixes``), so
        a decode step, and prompt tuning stacked with prefix tuning, tell prefix positions from token positions."""
        from transformers.cache_utils import DynamicCache  # the cache class of the Transformers the model runs on

        s, n = self.shape, self.config.prefix_length
        if cache is None:
            cache = DynamicCache(config=model.config)  # type: ignore[arg-type]
            cache.adaptune_throwaway = throwaway
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        kv = self.prefix_values().to(device=device, dtype=dtype).view(n, s.layers * 2, s.kv_heads, s.head_dim)
        kv = kv.permute(1, 2, 0, 3).unsqueeze(1).expand(-1, batch, -1, -1, -1)  # (L·2, B, H_kv, P, d)
        for layer in range(s.layers):
            cache.update(kv[2 * layer], kv[2 * layer + 1], layer)
        cache.adaptune_prefixes = {**getattr(cache, "adaptune_prefixes", {}), id(self): n}
        return cache

    def extra_repr(self) -> str:
        s = self.shape
        return f"prefix={self.config.prefix_length}, layers={s.layers}, kv_heads={s.kv_heads}, head_dim={s.head_dim}"


def fold_prefix(model: nn.Module, name: str) -> None:
    """Replace a reparameterised prefix adapter by the plain prefix its MLP computes (config ``reparam=False``):
    the same outputs, fewer parameters, and the form peft saves. Does nothing if it is already plain.

    Raises:
        KeyError: no adapter ``name``. TypeError: ``name`` is not a prefix-tuning adapter.
    """
    from ..core.model import adapter_modules

    (path, module), *_ = adapter_modules(model, name).items()
    if not isinstance(module, PrefixTuning):
        raise TypeError(f"adapter {name!r} is {type(module).__name__}, not prefix tuning; nothing to fold")
    if not module.config.reparam:
        return
    from ..core.placement import model_target

    folded = PrefixTuning(model_target(model), replace(module.config, reparam=False))
    with torch.no_grad():
        folded.prefix = nn.Parameter(module.prefix_values().detach().clone())
    folded.to(device=module.embedding.device, dtype=module.embedding.dtype).train(module.training)
    folded.prefix.requires_grad_(module.embedding.requires_grad)
    model.get_submodule(path.rsplit(".", 1)[0])[name] = folded


def build(target: Target, config: PrefixConfig) -> PrefixTuning:
    """The prefixes ``config`` puts at the model (``target`` is placement's one ``"model"`` target)."""
    return PrefixTuning(target, config)


METHOD = Method("prefix", PrefixConfig, build, modes=("model",))
