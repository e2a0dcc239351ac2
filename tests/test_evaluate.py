"""evaluate(): on tiny models whose logits are known, accuracy, macro-F1, loss and perplexity match a hand
computation (including the weighting of a last, smaller batch); predictions and the CLI's line format."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from adaptune.training.data.example import Example
from adaptune.training.evaluate import evaluate, predict_labels
from adaptune.training.tasks import EvalOptions, task_named

from .cli_fixtures import make_tokenizer, vocabulary

# logits per first word: "good" -> class 1 is likelier, "bad" -> class 0, anything else -> a tie
TABLE = {"good": [0.0, 2.0], "bad": [1.0, -1.0]}


class WordClassifier(nn.Module):
    """Logits read from TABLE by the first word after [CLS]; loss as HF computes it (mean cross-entropy)."""

    def __init__(self, tok) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2))  # evaluate finds the device through a parameter
        self.rows = {tok.convert_tokens_to_ids(w): torch.tensor(v) for w, v in TABLE.items()}

    def forward(self, input_ids, attention_mask=None, labels=None, **_):
        logits = torch.stack([self.rows.get(int(row[1]), torch.zeros(2)) for row in input_ids]) + self.bias
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(logits=logits, loss=loss)


class UniformLm(nn.Module):
    """A causal LM that gives every token the same logit: loss ln V on every target token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(vocab))

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.zero.expand(*input_ids.shape, -1))


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(vocabulary())


def ce(logits: list[float], gold: int) -> float:
    return -math.log(math.exp(logits[gold]) / sum(math.exp(x) for x in logits))


def test_classification_accuracy_and_loss_by_hand(tok) -> None:
    examples = [
        Example("good film", label="pos"),  # predicted pos: right
        Example("bad film", label="pos"),  # predicted neg: wrong
        Example("bad plot", label="neg"),  # predicted neg: right
    ]
    # batch_size 2: batches of 2 and 1; the loss is still the mean over the 3 examples
    m = evaluate("classification", WordClassifier(tok), tok, examples, labels=["neg", "pos"], batch_size=2)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["loss"] == pytest.approx((ce([0, 2], 1) + ce([1, -1], 1) + ce([1, -1], 0)) / 3)
    # F1: neg p 1/2 r 1 -> 2/3; pos p 1 r 1/2 -> 2/3
    assert m["macro_f1"] == pytest.approx(2 / 3)


def test_predict_labels_and_the_task_predictor(tok) -> None:
    model = WordClassifier(tok)
    found = predict_labels(model, tok, ["good", "bad"], ["neg", "pos"], batch_size=1, max_length=8)
    p_good = math.exp(2) / (1 + math.exp(2))
    p_bad = math.exp(1) / (math.exp(1) + math.exp(-1))
    assert [label for label, _ in found] == ["pos", "neg"]
    assert [p for _, p in found] == pytest.approx([p_good, p_bad])
    task = task_named("classification")
    preds = task.predict(model, tok, ["good"], EvalOptions(labels=["neg", "pos"], max_length=8))
    assert preds == [{"label": "pos", "prob": round(p_good, 4)}]
    assert task.show("good", preds[0]) == f"pos\t{p_good:.3f}\tgood"


def test_lm_loss_and_perplexity_by_hand(tok) -> None:
    examples = [Example("the film", target="was good"), Example("what", target="fun")]
    m = evaluate("causal-lm", UniformLm(len(tok)), tok, examples, batch_size=1, generate=False)
    # every target token (answer + EOS) costs ln V; prompt and padding positions are not counted
    assert m["loss"] == pytest.approx(math.log(len(tok)))
    assert m["perplexity"] == pytest.approx(len(tok))
    assert set(m) == {"loss", "perplexity"}


def test_classification_refuses_unknown_labels_naming_the_example(tok) -> None:
    from adaptune.training.data.datasets import DataError

    bad = [Example("good", label="pos", source="x.csv:2"), Example("meh", label="neutral", source="x.csv:3")]
    with pytest.raises(DataError, match=r"x.csv:3.*'neutral'"):
        task_named("classification").check_examples(bad, ["neg", "pos"], "adapter a")
    task_named("qa").check_examples(bad, None, "adapter a")  # nothing to check for generated answers
