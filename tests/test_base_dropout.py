"""set_base_dropout: dropout off in the frozen body only, kept in adapters and the head, survives train()."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

import adaptune
from adaptune import AdapterConfig
from adaptune.cli import main
from adaptune.core.base_dropout import base_dropout_modules


def bert() -> torch.nn.Module:
    torch.manual_seed(0)
    drop = {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.3}
    cfg = AutoConfig.for_model("bert", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, **drop)  # fmt: skip
    model = AutoModelForSequenceClassification.from_config(cfg)
    adaptune.add_adapter(model, "x", AdapterConfig.houlsby(init="normal", dropout=0.5))
    adaptune.train_adapter(model, "x")
    return model.train()


def body(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.bert(input_ids=ids).last_hidden_state


def test_body_is_deterministic_in_train_mode_and_adapter_dropout_stays() -> None:
    model, ids = bert(), torch.randint(0, 100, (2, 9))
    assert not torch.equal(body(model, ids), body(model, ids))  # base dropout on by default
    assert adaptune.set_base_dropout(model, False) > 0
    model.train()  # as HF's Trainer does every step: the setting survives
    # Adapter dropout 0.5 is still random in train mode...
    assert not torch.equal(body(model, ids), body(model, ids))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and m.p == 0.5:
            m.p = 0.0  # ...so silence it: what is left of the randomness is the base's, which must be gone
    assert torch.equal(body(model, ids), body(model, ids))
    paths = base_dropout_modules(model)
    assert "dropout" not in paths  # the head's dropout on the root stays on
    assert any(p.endswith("attention.self") for p in paths) and not any(".adapters." in p for p in paths)
    # gradients still reach the adapters
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "up.weight" in n)


def test_switching_back_on_and_deepcopy() -> None:
    model, ids = bert(), torch.randint(0, 100, (2, 9))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and m.p == 0.5:
            m.p = 0.0
    adaptune.set_base_dropout(model, False)
    twin = copy.deepcopy(model).train()
    assert torch.equal(body(twin, ids), body(twin, ids))
    assert adaptune.set_base_dropout(model, True) == 0
    model.train()
    assert not torch.equal(body(model, ids), body(model, ids))


def test_eval_outputs_unchanged() -> None:
    model, ids = bert(), torch.randint(0, 100, (2, 9))
    model.eval()
    before = body(model, ids)
    adaptune.set_base_dropout(model, False)
    assert torch.equal(body(model, ids), before)


def test_decoder_attention_modules_are_found() -> None:
    cfg = AutoConfig.for_model("llama", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, attention_dropout=0.2)  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg)
    adaptune.add_adapter(model, "x", AdapterConfig.pfeiffer())
    adaptune.train_adapter(model, "x")
    adaptune.set_base_dropout(model, False)
    ids = torch.randint(0, 100, (2, 7))
    model.train()
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert {p for p in base_dropout_modules(model)} == {f"model.layers.{i}.self_attn" for i in range(2)}


def test_cli_refuses_base_dropout_off_for_full_fine_tuning(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from .cli_fixtures import make_model_dir, make_sentiment_csv

    model = make_model_dir(tmp_path, "bert")
    data = make_sentiment_csv(tmp_path / "d.csv")
    args = ["train", "--model", str(model), "--data", str(data), "--max-steps", "2", "--batch-size", "4",
            "--max-length", "16", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main([*args, "--full-finetune", "--base-dropout", "off"]) == 2
    assert "full fine-tuning has no frozen base" in capsys.readouterr().err
    assert main([*args, "--base-dropout", "off"]) == 0
