"""Prompt tuning and prefix tuning (whole-model methods, slot mode "model") on tiny Llama, GPT-2 and BERT.

Neither has an identity at init (the new positions change every output), so instead: only the method's tensors
get gradients, save -> load reproduces outputs exactly, delete restores the base exactly, ``generate`` gives the
same tokens with the cache on and off, left / right padding give each row the outputs it has alone, folding the
prefix MLP keeps outputs, and composition: Stack works, other blocks holding them are refused with the rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

import adaptune
from adaptune import AdapterConfig, Average, PerExample, PrefixConfig, PromptConfig, Stack, fold_prefix

from .helpers import tiny_bert_classifier
from .tiny_models import tiny_config

P = 3
CONFIGS = {
    "prompt": PromptConfig(num_virtual_tokens=P),
    "prefix": PrefixConfig(prefix_length=P, reparam_hidden=16),
    "prefix_plain": PrefixConfig(prefix_length=P, reparam=False),
}
# prompt tuning keeps its P virtual positions in the outputs (as peft); prefix tuning adds none
SHIFT = {"prompt": P, "prefix": 0, "prefix_plain": 0}


def lm(model_type: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()


def with_adapter(model: torch.nn.Module, method: str) -> torch.nn.Module:
    adaptune.add_adapter(model, "a", CONFIGS[method])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in adaptune.adapter_modules(model, "a")["adapters.a"].parameters():
            p.normal_(0, 0.5)
    return model


def ids(batch: int = 2, length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 100, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_generate_cache_on_off_and_padding(model_type: str, method: str) -> None:
    model = with_adapter(lm(model_type), method)
    x = ids()
    kw = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "attention_mask": torch.ones_like(x)}
    with torch.no_grad():
        on = model.generate(input_ids=x, use_cache=True, **kw)
        off = model.generate(input_ids=x, use_cache=False, **kw)
    assert torch.equal(on, off)
    short = x[1:, :4]  # row alone, then padded to 6 on either side
    with torch.no_grad():
        alone = model(input_ids=short).logits[:, SHIFT[method] :]
        for side in ("left", "right"):
            pad = torch.zeros(1, 2, dtype=torch.long)
            padded = torch.cat([pad, short] if side == "left" else [short, pad], dim=1)
            mask = (torch.arange(6) >= 2 if side == "left" else torch.arange(6) < 4).long()[None]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=padded, attention_mask=mask, position_ids=pos).logits[:, SHIFT[method] :]
            real = out[:, 2:] if side == "left" else out[:, :4]
            assert (real - alone).abs().max() < 1e-5, side
        left = torch.cat([torch.zeros(1, 2, dtype=torch.long), short], dim=1)  # generate pads on the left
        gen = model.generate(input_ids=left, **{**kw, "attention_mask": (torch.arange(6) >= 2).long()[None]})
        gen_alone = model.generate(input_ids=short, **{**kw, "attention_mask": torch.ones_like(short)})
    assert torch.equal(gen[:, 6:], gen_alone[:, 4:])


@pytest.mark.parametrize("method", list(CONFIGS))
def test_train_save_load_delete(method: str, tmp_path: Path) -> None:
    model = lm("llama")
    x = ids()
    with torch.no_grad():
        base = model(input_ids=x).logits.clone()
    with_adapter(model, method)
    adaptune.train_adapter(model, "a")
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("adapters.a.") for n in changed), changed
    model.eval()
    with torch.no_grad():
        out = model(input_ids=x).logits.clone()
    adaptune.save_adapter(model, "a", tmp_path / "a")
    other = lm("llama")
    adaptune.load_adapter(other, tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(other(input_ids=x).logits, out)
    adaptune.set_active(model, None)
    adaptune.delete_adapter(model, "a")
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, base)
    assert not hasattr(model, "adapters") and not model._forward_pre_hooks


def test_labels_are_widened_with_ignored_positions() -> None:
    model = with_adapter(lm("gpt2"), "prompt")
    x = ids()
    with torch.no_grad():
        out = model(input_ids=x, labels=x)
    assert out.logits.shape[1] == x.shape[1] + P and torch.isfinite(out.loss)


def test_fold_prefix_keeps_outputs() -> None:
    model = with_adapter(lm("llama"), "prefix")
    x = ids()
    with torch.no_grad():
        out = model(input_ids=x).logits.clone()
    fold_prefix(model, "a")
    assert not adaptune.adapter_config(model, "a").reparam
    assert {n for n, _ in model.named_parameters() if ".adapters." in n or n.startswith("adapters.")} == {
        "adapters.a.prefix"
    }
    with torch.no_grad():
        assert (model(input_ids=x).logits - out).abs().max() < 1e-5


@pytest.mark.parametrize("config", [PromptConfig(num_virtual_tokens=P, position="after_first"), CONFIGS["prompt"]])
def test_bert_classifier_right_padding(config: PromptConfig) -> None:
    model = tiny_bert_classifier().eval()
    adaptune.add_adapter(model, "a", config)
    x = ids(1, 4)
    padded = torch.cat([x, torch.zeros(1, 2, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        alone = model(input_ids=x).logits
        both = model(input_ids=padded, attention_mask=mask, token_type_ids=torch.zeros_like(padded)).logits
    assert (alone - both).abs().max() < 1e-5


def test_bert_prefix_right_padding() -> None:
    model = tiny_bert_classifier().eval()
    with_adapter(model, "prefix")
    x = ids(1, 4)
    padded = torch.cat([x, torch.zeros(1, 2, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = model(input_ids=x).logits
        both = model(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits
        adaptune.set_active(model, None)
        base = model(input_ids=x).logits
    assert (alone - both).abs().max() < 1e-5 and not torch.equal(alone, base)


def test_composition_rules() -> None:
    model = with_adapter(lm("llama"), "prompt")
    adaptune.add_adapter(model, "q", CONFIGS["prefix"])
    adaptune.add_adapter(model, "b", AdapterConfig(reduction_factor=4))
    x = ids()
    for setup in (Stack("a", "q", "b"), Stack("q", "a")):  # whole-model methods stack in either order
        adaptune.set_active(model, setup)
        with torch.no_grad():
            g_on = model.generate(input_ids=x, max_new_tokens=4, do_sample=False, pad_token_id=0, use_cache=True)
            g_off = model.generate(input_ids=x, max_new_tokens=4, do_sample=False, pad_token_id=0, use_cache=False)
        assert torch.equal(g_on, g_off), setup
    for setup in (Average("a", "b"), PerExample(("a", None))):
        adaptune.set_active(model, setup)
        with pytest.raises(ValueError, match="run alone or in a Stack only"):
            model(input_ids=x)


def test_plan_counts_and_config_errors() -> None:
    model = lm("llama")
    s = tiny_config("llama")
    width = s.num_hidden_layers * 2 * s.num_key_value_heads * (s.hidden_size // s.num_attention_heads)
    assert adaptune.plan(model, PrefixConfig(prefix_length=5, reparam=False)).total_adapter_params == 5 * width
    assert adaptune.plan(model, PromptConfig(num_virtual_tokens=7)).total_adapter_params == 7 * s.hidden_size
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        PromptConfig(num_virtual_tokens=0)
    with pytest.raises(ValueError, match="position"):
        PromptConfig(position="end")
    with pytest.raises(ValueError, match="prefix_length"):
        PrefixConfig(prefix_length=-1)
