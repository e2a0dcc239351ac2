"""Sequence classification on decoders (tiny Llama, GPT-2, Gemma 3 text): the pooled logits are the head on the last
real token's hidden state, whatever the padding side, the batch, a pad token that is EOS, an adapter or bf16; and
the CLI (train -> eval -> predict) and the server (mixed-adapter batches) on a tiny decoder."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import adaptune
from adaptune import AdapterConfig
from adaptune.cli import main
from adaptune.formats.tensors import read_tensors
from adaptune.training.tasks import task_named
from adaptune.training.tasks.last_token import pool_last_token, pools_last_token

from .cli_fixtures import SPECIAL, make_model_dir, split_csv, vocabulary
from .tiny_models import tiny_config

MODEL_TYPES = ("llama", "gpt2", "gemma3_text")
# Different lengths (padding on every row but one) and texts that end in EOS, which is also the pad token below.
TEXTS = ["good film", "the film was quite a boring story really", "bad [EOS]", "[EOS]", "fun"]


def decoder_tokenizer(side: str = "right") -> object:
    """A word-level tokenizer laid out like a decoder's: BOS in front, no EOS appended, no pad token of its own (EOS
    pads, as ``load_tokenizer`` does for such tokenizers)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(set(vocabulary())))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", vocab["[CLS]"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", bos_token="[CLS]", eos_token="[EOS]", pad_token="[EOS]",
        padding_side=side,
    )  # fmt: skip


def classifier(model_type: str, labels: int = 3) -> nn.Module:
    """A tiny decoder classifier whose config pad id (0, [PAD]) is not the tokenizer's pad (EOS)."""
    from transformers import AutoModelForSequenceClassification

    config = tiny_config(model_type)
    config.num_labels = labels
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()


def manual_logits(plain: nn.Module, tok: object, texts: list[str]) -> torch.Tensor:
    """The head on the last token's hidden state of each text run alone, unpadded (a model without the hooks)."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = tok([text], return_tensors="pt")["input_ids"]
            rows.append(plain.score(plain.base_model(input_ids=ids).last_hidden_state[:, -1]))
    return torch.cat(rows)


def batch_logits(model: nn.Module, tok: object, texts: list[str], side: str) -> torch.Tensor:
    enc = tok(texts, padding=True, padding_side=side, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def _randomize_adapter(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_pooled_logits_are_the_head_on_the_last_real_token(model_type: str) -> None:
    model, tok = classifier(model_type), decoder_tokenizer()
    model.config.pad_token_id = tok.pad_token_id  # pad == EOS, as for a tokenizer without a pad token
    plain = copy.deepcopy(model)
    want = manual_logits(plain, tok, TEXTS)
    # Transformers alone pools the token before a final EOS (rows 2 and 3), and GPT-2 left-padded shifts positions.
    off = (batch_logits(plain, tok, TEXTS, "right") - want).abs().amax(-1)
    assert (off[2:4] > 1e-3).all()

    assert pool_last_token(model) and pools_last_token(model) and not pool_last_token(model)  # added once
    for side in ("right", "left"):
        torch.testing.assert_close(batch_logits(model, tok, TEXTS, side), want, atol=1e-5, rtol=0)
    # another batch composition: reversed and in pairs
    torch.testing.assert_close(batch_logits(model, tok, TEXTS[::-1], "left").flip(0), want, atol=1e-5, rtol=0)
    pairs = torch.cat([batch_logits(model, tok, TEXTS[i : i + 2], "right") for i in range(0, len(TEXTS), 2)])
    torch.testing.assert_close(pairs, want, atol=1e-5, rtol=0)
    # the loss is the cross-entropy of the pooled logits
    labels = torch.tensor([0, 1, 2, 1, 0])
    enc = tok(TEXTS, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        loss = model(**enc, labels=labels).loss
    torch.testing.assert_close(loss, nn.functional.cross_entropy(want, labels), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_with_an_adapter_and_a_config_pad_that_is_not_the_tokenizers(model_type: str) -> None:
    model, tok = classifier(model_type), decoder_tokenizer()
    assert model.config.pad_token_id != tok.pad_token_id  # Transformers would pool padding under right padding
    adaptune.add_adapter(model, "task", AdapterConfig.pfeiffer())
    _randomize_adapter(model)
    want = manual_logits(copy.deepcopy(model), tok, TEXTS)
    pool_last_token(model)
    for side in ("right", "left"):
        torch.testing.assert_close(batch_logits(model, tok, TEXTS, side), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_bf16_pools_the_same_token(model_type: str) -> None:
    model, tok = classifier(model_type).to(torch.bfloat16), decoder_tokenizer()
    want = manual_logits(copy.deepcopy(model), tok, TEXTS).float()
    pool_last_token(model)
    for side in ("right", "left"):
        got = batch_logits(model, tok, TEXTS, side).float()
        # bf16 keeps ~3 significant digits; pooling a wrong token is off by the logits' own scale (~0.1-1)
        torch.testing.assert_close(got, want, atol=3e-2, rtol=0)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_prompt_tuning_pools_the_last_real_token(model_type: str) -> None:
    # The soft prompt goes in as inputs_embeds, so Transformers cannot look for the pad id: it takes the last column.
    from adaptune.methods.prompt import PromptConfig

    model, tok = classifier(model_type), decoder_tokenizer()
    adaptune.add_adapter(model, "prompt", PromptConfig(num_virtual_tokens=3))
    pool_last_token(model)
    alone = torch.cat([batch_logits(model, tok, [text], "right") for text in TEXTS])
    torch.testing.assert_close(batch_logits(model, tok, TEXTS, "right"), alone, atol=1e-5, rtol=0)


def test_the_classification_task_hooks_decoders_only(tmp_path: Path) -> None:
    task = task_named("classification")
    llama, tok = task.load_model(_decoder_folder(tmp_path, "llama"), ["neg", "pos"])  # its tokenizer pads left
    bert, _ = task.load_model(make_model_dir(tmp_path, "bert"), ["neg", "pos"])
    assert pools_last_token(llama) and not pools_last_token(bert) and not pool_last_token(bert)
    assert tok.padding_side == "right"  # where prompt / prefix tuning also pool exactly


def _decoder_folder(root: Path, model_type: str) -> Path:
    """A saved tiny decoder (causal-LM checkpoint) with the left-padding, pad-is-EOS tokenizer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    folder = root / model_type
    AutoModelForCausalLM.from_config(tiny_config(model_type)).save_pretrained(folder)
    decoder_tokenizer("left").save_pretrained(folder)
    return folder


def test_cli_train_eval_predict_on_a_decoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data, out = _decoder_folder(tmp_path, "gpt2"), split_csv(tmp_path / "split.csv"), tmp_path / "run"
    train = ["train", "--model", str(model), "--data", str(data), "--out", str(out), "--batch-size", "8",
             "--max-length", "16", "--max-steps", "4", "--lr", "1e-2", "--precision", "fp32"]  # fmt: skip
    assert main(train) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "score.weight" in read_tensors(out / "adapter" / "head.safetensors")
    capsys.readouterr()
    args = ["eval", "--adapter", str(out / "adapter"), "--data", str(data), "--split", "test", "--json"]
    assert main([*args, "--precision", "fp32"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert ev["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert main(["predict", "--adapter", str(out / "adapter"), "--jsonl", "good film", "the plot was dull [EOS]"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["label"] in ("neg", "pos") for x in lines] == [True, True]


def test_serve_mixes_decoder_adapters_per_row(tmp_path: Path) -> None:
    from adaptune.serve import ServeOptions, build_server
    from adaptune.serve.batching import ClassifyJob, classify_forward

    model_dir = _decoder_folder(tmp_path, "gpt2")
    label_sets = {"sent": ["neg", "pos"], "topic": ["world", "sport", "tech"]}
    folders = {}
    for name, labels in label_sets.items():
        model, _ = task_named("classification").load_model(model_dir, labels)
        adaptune.add_adapter(model, name, AdapterConfig.pfeiffer())
        _randomize_adapter(model)
        with torch.no_grad():
            model.score.weight.normal_(0, 0.5)
        folders[name] = adaptune.save_adapter(model, name, tmp_path / name, heads=("score",))
        info = {"task": "classification", "labels": labels, "model": str(model_dir), "max_length": 32}
        (folders[name] / "task.json").write_text(json.dumps(info), encoding="utf-8")
    server = build_server([(None, f) for f in folders.values()], ServeOptions(), precision="fp32")
    registry = server.registry

    def run(jobs: list[tuple[str, list[str]]]) -> list[list[torch.Tensor]]:
        work = [ClassifyJob(texts, registry.resolve(name), None) for name, texts in jobs]  # type: ignore[arg-type]
        return classify_forward(registry, server.batch_tokenizer, work, 32, server.autocast)  # type: ignore[return-value]

    mixed = run([("sent", TEXTS), ("topic", TEXTS[::-1]), ("sent", TEXTS[1:3])])
    alone = {name: [run([(name, [t])])[0][0] for t in TEXTS] for name in label_sets}
    torch.testing.assert_close(mixed[0], alone["sent"], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[1], alone["topic"][::-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed[2], alone["sent"][1:3], atol=1e-5, rtol=0)
    # and alone equals a plain Transformers model with the adapter, one unpadded text at a time
    tok = decoder_tokenizer()
    for name, labels in label_sets.items():
        model, _ = task_named("classification").load_model(model_dir, labels)
        adaptune.load_adapter(model, folders[name], activate=True)
        plain = manual_logits(model.eval(), tok, TEXTS).softmax(-1)
        torch.testing.assert_close(torch.stack(alone[name]), plain, atol=1e-5, rtol=0)
