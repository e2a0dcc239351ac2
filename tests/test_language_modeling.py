"""``--task language-modeling``: unlabeled text readers, BERT-style masking, the fresh masked-LM head of a checkpoint
without one (trained and saved with the adapter, the tied embeddings frozen), and train -> eval -> predict through
the CLI on a tiny encoder (masked LM) and a tiny decoder (causal LM), with a MAD-X language adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import adaptune
from adaptune.cli import main
from adaptune.training.data.datasets import DataError, load_dataset, read_file
from adaptune.training.tasks import task_named
from adaptune.training.tasks.language_modeling import mask_tokens

from .cli_fixtures import make_model_dir, make_sentiment_csv, make_tokenizer, vocabulary

# 48 distinct sentences of one pattern (splits are by content: duplicates would all land in one split).
SENTENCES = [
    f"the {noun} was {adverb} {adjective}"
    for noun in ("film", "plot", "story", "acting")
    for adverb in ("very", "really", "quite")
    for adjective in ("good", "bad", "dull", "great")
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import AutoConfig, AutoModel

    root = tmp_path_factory.mktemp("lm")
    tok = make_tokenizer(vocabulary())
    tok.add_special_tokens({"mask_token": "[MASK]"})
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "bert", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    encoder = root / "bert-mask"
    AutoModel.from_config(cfg).save_pretrained(encoder)  # a body without an MLM head, like MiniLM
    tok.save_pretrained(encoder)
    text = root / "text.txt"
    text.write_text("\n".join(SENTENCES[:18]) + "\n\n" + "\n".join(SENTENCES[18:]) + "\n", encoding="utf-8")
    assert {"great", "really"} <= set(vocabulary())
    return {"encoder": encoder, "decoder": make_model_dir(root, "llama"), "text": text, "root": root}


def test_text_readers(folders: dict[str, Path], tmp_path: Path) -> None:
    records = read_file(folders["text"], "language-modeling")
    assert len(records.examples) == len(SENTENCES)  # the blank line is skipped
    assert records.examples[0].text == SENTENCES[0] and records.examples[0].source.endswith("text.txt:1")
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\nhello there,pos\nbye now,neg\n", encoding="utf-8")
    assert [(e.text, e.label) for e in read_file(csv, "language-modeling").examples] == [
        ("hello there", None),
        ("bye now", None),
    ]
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"blank.txt: no text"):
        read_file(blank, "language-modeling")


def test_builtin_texts_keep_the_builtin_splits() -> None:
    pytest.importorskip("yaml")
    qa = load_dataset("chatterbot_en", "qa")
    lm = load_dataset("chatterbot_en", "language-modeling")
    assert lm.task == "language-modeling" and lm.labels is None
    assert len(lm.test) == len(qa.test) and lm.test[0].text == f"{qa.test[0].text} {qa.test[0].target}"


def test_masking() -> None:
    tok = make_tokenizer(vocabulary())
    tok.add_special_tokens({"mask_token": "[MASK]"})
    ids = torch.randint(5, len(tok) - 1, (64, 50), generator=torch.Generator().manual_seed(0))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    special[3] = True  # an all-special row (padding only) stays out of the loss
    special[4] = True
    special[4, 1] = False  # one real token: it is always picked
    masked, labels = mask_tokens(ids, special, tok, torch.Generator().manual_seed(1))
    picked = labels != -100
    assert not picked[special].any() and not picked[3].any() and picked[4, 1]
    assert 0.12 < picked.float().sum() / (~special).sum() < 0.18
    assert torch.equal(labels[picked], ids[picked])
    to_mask = (masked[picked] == tok.mask_token_id).float().mean()
    assert 0.7 < to_mask < 0.9  # 80% of the picked positions become [MASK]
    assert torch.equal(masked[~picked], ids[~picked])


def test_fresh_mlm_head_trains_without_the_tied_embeddings(folders: dict[str, Path]) -> None:
    task = task_named("language-modeling")
    model, _tok = task.load_model(folders["encoder"])
    assert type(model).__name__ == "BertForMaskedLM"
    assert task.trained_heads(model) == ("cls.predictions.transform.LayerNorm", "cls.predictions.transform.dense")
    adaptune.add_adapter(model, "lang", adaptune.MixConfig.madx())
    adaptune.train_adapter(model, "lang", heads=task.trained_heads(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("cls.")} == {
        f"cls.predictions.transform.{k}" for k in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias")
    }
    assert not model.get_input_embeddings().weight.requires_grad


def test_cli_masked_lm_language_adapter(folders: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "run"
    argv = ["train", "--task", "language-modeling", "--model", str(folders["encoder"]), "--data", str(folders["text"])]
    argv += ["--out", str(out), "--method", "mix", "--mix-preset", "madx", "--max-steps", "12", "--batch-size", "8"]
    assert main([*argv, "--lr", "5e-3", "--max-length", "16", "--precision", "fp32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_loss"] > 0 and 0 <= metrics["test_masked_accuracy"] <= 1
    saved = (out / "adapter").iterdir()
    assert any("head" in p.name for p in saved)  # the fresh MLM transform travels with the adapter
    capsys.readouterr()
    evaluated = ["eval", "--adapter", str(out / "adapter"), "--data", str(folders["text"]), "--json"]
    assert main(evaluated) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"loss", "perplexity", "masked_accuracy"} <= set(scores)
    assert main(["predict", "the film was [MASK] good", "--adapter", str(out / "adapter")]) == 0
    assert "mask 1:" in capsys.readouterr().out


def test_cli_causal_lm_language_adapter_lowers_the_loss(folders: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "run"
    argv = ["train", "--task", "language-modeling", "--model", str(folders["decoder"]), "--data", str(folders["text"])]
    argv += ["--out", str(out), "--max-steps", "30", "--batch-size", "8", "--lr", "2e-2", "--precision", "fp32"]
    argv += ["--reduction-factor", "2"]
    assert main(argv) == 0
    capsys.readouterr()
    base = ["eval", "--model", str(folders["decoder"]), "--task", "language-modeling", "--data", str(folders["text"])]
    assert main([*base, "--json"]) == 0
    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", "--adapter", str(out / "adapter"), "--data", str(folders["text"]), "--json"]) == 0
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # A tiny random Llama's frozen head (init std 0.02 after an RMS norm) caps how far logits can move: the loss
    # cannot fall far, but it must fall.
    assert after["loss"] < before["loss"] - 0.1
    assert after["perplexity"] == pytest.approx(torch.tensor(after["loss"]).exp().item(), rel=1e-5)
    assert main(["predict", "the film", "--max-new-tokens", "3", "--adapter", str(out / "adapter")]) == 0
    assert "=>" in capsys.readouterr().out


def test_cli_madx_flow_language_adapter_under_a_task_adapter(
    folders: dict[str, Path], tmp_path: Path, capsys: Any
) -> None:
    """Language adapter (MAD-X mix) on the causal LM -> task adapter trained with --stack-on on the classifier of the
    same base (the LM head's inverse has no weights and is left out there) -> eval of Stack(lang, task)."""
    lang, task = tmp_path / "lang", tmp_path / "task"
    common = ["--model", str(folders["decoder"]), "--batch-size", "8", "--precision", "fp32", "--max-length", "16"]
    argv = ["train", "--task", "language-modeling", "--data", str(folders["text"]), "--out", str(lang), *common]
    assert main([*argv, "--method", "mix", "--mix-preset", "madx", "--max-steps", "3", "--name", "lang"]) == 0
    csv = make_sentiment_csv(tmp_path / "s.csv")
    argv = ["train", "--data", str(csv), "--out", str(task), "--stack-on", str(lang / "adapter"), *common]
    assert main([*argv, "--max-steps", "3", "--name", "task"]) == 0
    info = json.loads((task / "adapter" / "task.json").read_text())
    assert info["task"] == "classification" and info["stacked_on"] == [str((lang / "adapter").resolve())]
    saved = json.loads((task / "adapter" / "adapter_config.json").read_text())
    assert saved["name"] == "task"  # only the task adapter is saved; the language adapter stays where it was
    capsys.readouterr()
    setup = ["--adapter", str(task / "adapter"), str(lang / "adapter"), "--setup", "Stack(lang, task)"]
    assert main(["eval", *setup, "--data", str(csv), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = json.loads((task / "metrics.json").read_text())
    assert 0 <= scores["accuracy"] <= 1 and run["test_accuracy"] >= 0


def test_stack_on_refusals(folders: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    lang = tmp_path / "lang"
    common = ["--model", str(folders["decoder"]), "--batch-size", "8", "--precision", "fp32", "--max-length", "16"]
    argv = ["train", "--task", "language-modeling", "--data", str(folders["text"]), "--out", str(lang), *common]
    assert main([*argv, "--max-steps", "1", "--name", "lang"]) == 0
    csv = make_sentiment_csv(tmp_path / "s.csv")
    base = ["train", "--data", str(csv), "--stack-on", str(lang / "adapter"), *common, "--max-steps", "1"]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "ft"), "--full-finetune"]) == 2
    assert "--stack-on trains a new adapter on top of saved ones: not with --full-finetune" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "same"), "--name", "lang"]) == 2
    assert "--name 'lang' is taken by a --stack-on adapter" in capsys.readouterr().err
