"""Invertible adapters (``methods.invertible``) and the MAD-X language adapter (``MixConfig.madx()``): identity at
init, the inverse undoes the forward coupling, F and G are stored once and get gradients from both places,
save -> load exact, where they go on encoders / decoders / classifiers, and a task adapter stacks on top."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig

import adaptune
from adaptune import AdapterConfig, InvertibleConfig, MixConfig, Stack

from .helpers import tiny_bert_classifier
from .tiny_models import tiny_config


def bert_mlm() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    return transformers.BertForMaskedLM(cfg).eval()


def llama_lm() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(tiny_config("llama")).eval()


def gpt2_lm() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(tiny_config("gpt2")).eval()


def randomise(model: torch.nn.Module, name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (p for m in adaptune.adapter_modules(model, name).values() for p in m.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("build", "places"),
    [
        (bert_mlm, ["bert.embeddings", "cls.predictions.decoder"]),
        (llama_lm, ["model.embed_tokens", "lm_head"]),
        (gpt2_lm, ["transformer.wte", "lm_head"]),
    ],
    ids=["bert-mlm", "llama", "gpt2"],
)
def test_places_identity_and_shared_weights(build: object, places: list[str], tmp_path: Path) -> None:
    model = build()  # type: ignore[operator]
    base = logits(model, IDS)
    targets = adaptune.add_adapter(model, "inv", InvertibleConfig())
    assert [t.module for t in targets] == places and [t.mode for t in targets] == ["output", "input"]
    assert torch.equal(logits(model, IDS), base)  # F = G = 0 at init
    own = [k for k in model.state_dict() if ".adapters.inv." in k]
    assert own and all(k.startswith(places[0]) for k in own)  # F and G live once, at the embeddings

    randomise(model, "inv")
    adapted = logits(model, IDS)
    assert not torch.allclose(adapted, base)
    adaptune.train_adapter(model, "inv", heads=())
    model(input_ids=IDS).logits.pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == set(own) and all(g is not None and g.abs().sum() > 0 for g in grads.values())

    model.eval()
    adaptune.save_adapter(model, "inv", tmp_path / "inv")
    fresh = build()  # type: ignore[operator]
    adaptune.load_adapter(fresh, tmp_path / "inv")
    assert torch.equal(logits(fresh, IDS), adapted)
    adaptune.set_active(fresh, None)
    adaptune.delete_adapter(fresh, "inv")
    assert torch.equal(logits(fresh, IDS), base)


def test_inverse_undoes_the_coupling() -> None:
    model = llama_lm()
    adaptune.add_adapter(model, "inv", InvertibleConfig(reduction_factor=4, activation="tanh"))
    randomise(model, "inv")
    forward, inverse = adaptune.adapter_modules(model, "inv").values()
    x = torch.randn(3, 5, model.config.hidden_size)
    y = forward(x)
    assert (y - x).abs().max() > 0.1
    assert torch.allclose(inverse(y), x, atol=1e-6)
    assert torch.allclose(forward(x, delta_only=True), y - x)


def test_classifier_gets_only_the_forward_half_and_a_task_adapter_stacks() -> None:
    model = tiny_bert_classifier()
    ids = IDS
    base = logits(model, ids)
    targets = adaptune.add_adapter(model, "lang", MixConfig.madx())
    assert [t.module for t in targets if t.parts == (1,)] == ["bert.embeddings"]  # no LM head: no inverse
    adaptune.add_adapter(model, "task", AdapterConfig.pfeiffer())
    randomise(model, "lang")
    adaptune.set_active(model, Stack("lang", "task"))
    stacked = logits(model, ids)
    adaptune.set_active(model, "lang")
    assert torch.allclose(stacked, logits(model, ids))  # the new task adapter is still an identity
    assert not torch.allclose(stacked, base)


def test_albert_factorised_embeddings_use_the_embedding_width() -> None:
    cfg = AutoConfig.for_model(
        "albert",
        hidden_size=32,
        embedding_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    model = transformers.AlbertForMaskedLM(cfg).eval()
    base = logits(model, IDS)
    targets = adaptune.add_adapter(model, "inv", InvertibleConfig())
    assert [(t.module, t.width) for t in targets] == [("albert.embeddings", 16), ("predictions.decoder", 16)]
    assert torch.equal(logits(model, IDS), base)
    randomise(model, "inv")
    assert not torch.allclose(logits(model, IDS), base)


def test_bad_config() -> None:
    with pytest.raises(ValueError, match=r"InvertibleConfig.reduction_factor=0"):
        InvertibleConfig(reduction_factor=0)
    with pytest.raises(ValueError, match=r"InvertibleConfig.activation='nope'"):
        InvertibleConfig(activation="nope")
