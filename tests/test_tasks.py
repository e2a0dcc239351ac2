"""Tasks: the registry, the batch encoders (ids, attention masks, labels -100 on prompt and padding) and the metric
functions, with values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from adaptune.cli import build_parser
from adaptune.training.data.example import Example
from adaptune.training.tasks import (
    LmEncoder,
    classification_metrics,
    encode_classification,
    perplexity,
    qa_metrics,
    task_named,
    task_names,
    token_loss_sums,
)
from adaptune.training.tasks.registry import register_task

from .cli_fixtures import make_tokenizer, vocabulary


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(vocabulary())


def ids(tok, words: str) -> list[int]:
    return tok.convert_tokens_to_ids(words.split())


def test_registry_names_metrics_and_refusals() -> None:
    names = ("classification", "qa", "causal-lm", "extractive-qa", "language-modeling", "token-classification")
    assert task_names() == names
    assert task_names(needs_labels=False) == ("qa", "causal-lm", "extractive-qa", "language-modeling")
    ranks = {n: (task_named(n).main_metric_key, task_named(n).higher_is_better) for n in task_names()}
    assert ranks == {
        "classification": ("test_accuracy", True),
        "qa": ("test_loss", False),
        "causal-lm": ("test_loss", False),
        "extractive-qa": ("test_f1", True),
        "language-modeling": ("test_loss", False),
        "token-classification": ("test_entity_f1", True),
    }
    # Every task's data is readable: rows of columns (datasets.TASKS) or a task's own file reader (CoNLL, SQuAD).
    from adaptune.training.data.datasets import TASKS as READABLE
    from adaptune.training.data.readers import FILE_READERS

    assert set(task_names()) == set(READABLE) | set(FILE_READERS)
    with pytest.raises(ValueError, match="classification, qa, causal-lm"):
        task_named("ner")
    with pytest.raises(ValueError, match="already registered"):
        register_task(task_named("qa"))


def test_every_cli_task_choice_comes_from_the_registry() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    choices = {
        cmd: next(a.choices for a in p._actions if a.dest == "task") for cmd, p in sub.items() if cmd != "bench"
    }
    for cmd in ("train", "fuse", "plan", "compare", "sweep"):
        assert tuple(choices[cmd]) == task_names(), cmd
    for cmd in ("eval", "predict", "explain"):  # without --adapter: a bare base model, no trained head
        assert tuple(choices[cmd]) == task_names(needs_labels=False), cmd


def test_classification_encoder_pads_masks_and_numbers_labels(tok) -> None:
    examples = [Example("good film", label="pos"), Example("the film was bad", label="neg")]
    enc = encode_classification(tok, examples, {"neg": 0, "pos": 1}, max_length=16)
    cls, sep, pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    assert enc["input_ids"].tolist() == [
        [cls, *ids(tok, "good film"), sep, pad, pad],
        [cls, *ids(tok, "the film was bad"), sep],
    ]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert enc["labels"].tolist() == [1, 0]
    # truncation keeps max_length tokens (with [SEP] last); unlabelled examples give no labels
    short = encode_classification(tok, [Example("the film was bad")], {}, max_length=3)
    assert short["input_ids"].tolist() == [[cls, *ids(tok, "the"), sep]] and "labels" not in short


def test_task_encoder_is_the_classification_encoder(tok) -> None:
    encode = task_named("classification").encoder(tok, ["neg", "pos"], 16)
    enc = encode([Example("good", label="pos")])
    assert enc["labels"].tolist() == [1]
    with pytest.raises(ValueError, match="label names"):
        task_named("classification").encoder(tok, None, 16)


def test_lm_encoder_masks_prompt_and_padding(tok) -> None:
    eos, pad = tok.eos_token_id, tok.pad_token_id
    enc = LmEncoder(tok, "causal-lm", max_length=16).encode(
        [Example("the film", target="was good"), Example("what", target="fun")]
    )
    p0, t0 = ids(tok, "the film"), [*ids(tok, "was good"), eos]
    p1, t1 = ids(tok, "what"), [*ids(tok, "fun"), eos]
    assert enc["input_ids"].tolist() == [p0 + t0, p1 + t1 + [pad] * 2]
    assert enc["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert enc["labels"].tolist() == [[-100, -100, *t0], [-100, *t1, -100, -100]]
    # truncation cuts ids and labels alike
    cut = LmEncoder(tok, "causal-lm", max_length=3).encode([Example("the film", target="was good")])
    assert cut["input_ids"].tolist() == [[*p0, t0[0]]] and cut["labels"].tolist() == [[-100, -100, t0[0]]]


def test_qa_prompt_without_chat_template(tok) -> None:
    enc = LmEncoder(tok, "qa", max_length=32)
    assert enc.prompt("1 plus 2 ?") == "Question: 1 plus 2 ?\nAnswer:"
    assert enc.target(Example("q", target="3")) == " 3[EOS]"


def test_classification_metrics_values() -> None:
    m = classification_metrics([0, 1, 1, 2], [0, 1, 0, 2], num_labels=3)
    # per class F1: 0 -> p 1/2, r 1 -> 2/3; 1 -> p 1, r 1/2 -> 2/3; 2 -> 1
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # a label never seen in gold or predictions counts as F1 0 in the macro mean
    assert classification_metrics([0, 0], [0, 0], num_labels=2)["macro_f1"] == pytest.approx(0.5)


def test_qa_metrics_values() -> None:
    m = qa_metrics(["The cat", "Paris", ""], ["cat!", "London paris", ""])
    # 1: "the" and "!" normalised away -> exact; 2: p 1/2, r 1 -> F1 2/3; 3: both empty -> exact
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert m["token_f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert qa_metrics(["北京"], ["北京市"]) == pytest.approx({"exact_match": 0.0, "token_f1": 0.8})


def test_token_loss_sums_and_perplexity() -> None:
    logits = torch.zeros(1, 4, 5)  # uniform over 5 tokens: every position costs ln 5
    labels = torch.tensor([[-100, 2, -100, 3]])  # shifted: positions 0 and 2 predict labels 2 and 3
    total, count = token_loss_sums(logits, labels)
    assert count == 2 and total == pytest.approx(2 * math.log(5))
    assert perplexity(math.log(4)) == pytest.approx(4.0)
    assert perplexity(1e6) == pytest.approx(math.exp(50))  # capped: stays finite in JSON
