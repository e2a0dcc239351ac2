"""Sequence classification: ``AutoModelForSequenceClassification``; accuracy and macro-F1, plus held-out loss.

Decoder classifiers (a ``score`` head on the last token) pool each row's last real token by its attention mask,
whatever the padding side and even where the pad token is EOS (``last_token``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.datasets import check_labels
from ..data.example import Example
from .base import Encoder, EvalOptions, Task, batches, device_of, load_labelled, load_tokenizer, progress, set_pad_id
from .last_token import pool_last_token

__all__ = ["Classification", "classification_metrics", "encode_classification", "predict_labels", "tokenize_texts"]


def tokenize_texts(tok: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """The classification tokenisation (training, evaluation, prediction and explain all use it): padded to the
    longest text, truncated to ``max_length``."""
    return dict(tok(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt"))


def encode_classification(
    tok: Any, examples: Sequence[Example], label_ids: dict[str, int], max_length: int
) -> dict[str, torch.Tensor]:
    """``tokenize_texts`` of the examples, with integer ``labels`` when every example has one."""
    enc = tokenize_texts(tok, [e.text for e in examples], max_length)
    if all(e.label is not None for e in examples):
        enc["labels"] = torch.tensor([label_ids[e.label] for e in examples])  # type: ignore[index]
    return enc


def classification_metrics(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over all labels, scikit-learn's definition)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=list(range(num_labels)), average="macro", zero_division=0)),
    }


@torch.no_grad()
def predict_labels(
    model: nn.Module, tok: Any, texts: Sequence[str], labels: Sequence[str], batch_size: int, max_length: int
) -> list[tuple[str, float]]:
    """(label, probability) for each text."""
    model.eval()
    out: list[tuple[str, float]] = []
    for chunk in batches(list(texts), batch_size):
        enc = tokenize_texts(tok, chunk, max_length)
        probs = model(**{k: v.to(device_of(model)) for k, v in enc.items()}).logits.float().softmax(-1)
        conf, idx = probs.max(-1)
        out.extend((labels[i], float(c)) for i, c in zip(idx.tolist(), conf.tolist(), strict=True))
    return out


def _need_labels(labels: Sequence[str] | None) -> Sequence[str]:
    if not labels:
        raise ValueError("classification needs the label names")
    return labels


class Classification(Task):
    """Text -> one of a fixed set of labels."""

    name = "classification"
    main_metric = "accuracy"
    higher_is_better = True
    needs_labels = True

    def load_model(self, path: Path, labels: Sequence[str] | None = None) -> tuple[nn.Module, Any]:
        from transformers import AutoModelForSequenceClassification

        tok = load_tokenizer(path)
        names = list(_need_labels(labels))
        model = load_labelled(AutoModelForSequenceClassification, path, names)
        set_pad_id(model, tok)  # Transformers refuses a batch of several rows to a decoder classifier without one
        if pool_last_token(model):
            # The pooling reads the mask, so either side pools the right token; right padding also leaves prompt /
            # prefix tuning's virtual tokens where an unpadded text has them (and a sliding window over them).
            tok.padding_side = "right"
        return model, tok

    def encoder(self, tok: Any, labels: Sequence[str] | None, max_length: int) -> Encoder:
        ids = {name: i for i, name in enumerate(_need_labels(labels))}
        return lambda examples: encode_classification(tok, examples, ids, max_length)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, tok: Any, examples: Sequence[Example], options: EvalOptions
    ) -> dict[str, float]:
        model.eval()
        labels = _need_labels(options.labels)
        encode = self.encoder(tok, labels, options.max_length)
        gold: list[int] = []
        pred: list[int] = []
        loss_sum = 0.0
        bar = progress(len(examples), "eval")
        for chunk in batches(list(examples), options.batch_size):
            enc = {k: v.to(device_of(model)) for k, v in encode(chunk).items()}
            out = model(**enc)
            loss_sum += float(out.loss) * len(chunk)  # the batch mean, weighted back to a per-example sum
            gold += enc["labels"].tolist()
            pred += out.logits.argmax(-1).tolist()
            bar.update(len(chunk))
        bar.close()
        metrics = classification_metrics(gold, pred, len(labels))
        metrics["loss"] = loss_sum / max(1, len(examples))
        return metrics

    def predict(self, model: nn.Module, tok: Any, texts: Sequence[str], options: EvalOptions) -> list[dict[str, Any]]:
        found = predict_labels(model, tok, texts, _need_labels(options.labels), options.batch_size, options.max_length)
        return [{"label": label, "prob": round(prob, 4)} for label, prob in found]

    def show(self, text: str, prediction: dict[str, Any]) -> str:
        return f"{prediction['label']}\t{prediction['prob']:.3f}\t{text}"

    def check_examples(self, examples: Sequence[Example], labels: Sequence[str] | None, source: str) -> None:
        check_labels(examples, _need_labels(labels), source)
