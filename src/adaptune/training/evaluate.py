"""Scoring a model (with its active adapters) on examples, per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .codeexec import pass_at_1
from .data.example import Example
from .tasks import (
    LmEncoder,
    batches,
    classification_metrics,
    encode_classification,
    perplexity,
    qa_metrics,
    token_loss_sums,
)

__all__ = ["evaluate", "lm_loss", "predict_labels"]


def _progress(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None, leave=False, unit="ex")  # disable=None: quiet off a TTY


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_labels(
    model: nn.Module, tok: Any, texts: Sequence[str], labels: Sequence[str], batch_size: int, max_length: int
) -> list[tuple[str, float]]:
    """(label, probability) for each text."""
    model.eval()
    out: list[tuple[str, float]] = []
    for chunk in batches(list(texts), batch_size):
        enc = tok(list(chunk), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        probs = model(**{k: v.to(_device(model)) for k, v in enc.items()}).logits.float().softmax(-1)
        conf, idx = probs.max(-1)
        out.extend((labels[i], float(c)) for i, c in zip(idx.tolist(), conf.tolist(), strict=True))
    return out


@torch.no_grad()
def lm_loss(model: nn.Module, encoder: LmEncoder, examples: Sequence[Example], batch_size: int) -> float:
    """Mean next-token loss over the target tokens of ``examples``."""
    model.eval()
    total, count = 0.0, 0
    bar = _progress(len(examples), "loss")
    for chunk in batches(list(examples), batch_size):
        enc = {k: v.to(_device(model)) for k, v in encoder.encode(chunk).items()}
        labels = enc.pop("labels")
        s, n = token_loss_sums(model(**enc).logits, labels)
        total, count = total + s, count + n
        bar.update(len(chunk))
    bar.close()
    return total / max(1, count)


@torch.no_grad()
def evaluate(
    task: str,
    model: nn.Module,
    tok: Any,
    examples: Sequence[Example],
    *,
    labels: Sequence[str] | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    generate: bool = True,
    generate_limit: int | None = 100,
    max_new_tokens: int = 64,
    exec_tests: bool = False,
) -> dict[str, float]:
    """Task metrics on ``examples``.

    Args:
        task: ``classification``, ``qa`` or ``causal-lm``.
        model: the model with its adapters active.
        tok: its tokenizer.
        examples: the examples (classification: with labels among ``labels``).
        labels: label names, index = class id (classification).
        batch_size: examples per forward.
        max_length: truncation length.
        generate: also generate answers (qa: exact match / token F1; code: pass@1 when ``exec_tests``).
        generate_limit: generate for at most this many examples (generation is slow on CPU).
        max_new_tokens: generation budget per example.
        exec_tests: run generated code against the example's tests (subprocess, timeout) for pass@1.
    """
    model.eval()
    if task == "classification":
        assert labels is not None
        ids = {name: i for i, name in enumerate(labels)}
        gold, pred = [], []
        loss_sum = 0.0
        bar = _progress(len(examples), "eval")
        for chunk in batches(list(examples), batch_size):
            enc = {k: v.to(_device(model)) for k, v in encode_classification(tok, chunk, ids, max_length).items()}
            out = model(**enc)
            loss_sum += float(out.loss) * len(chunk)
            gold += enc["labels"].tolist()
            pred += out.logits.argmax(-1).tolist()
            bar.update(len(chunk))
        bar.close()
        metrics = classification_metrics(gold, pred, len(labels))
        metrics["loss"] = loss_sum / max(1, len(examples))
        return metrics

    encoder = LmEncoder(tok, task, max_length)
    loss = lm_loss(model, encoder, examples, batch_size)
    metrics = {"loss": loss, "perplexity": perplexity(loss)}
    subset = list(examples)[: generate_limit or len(examples)]
    if generate and task == "qa" and subset:
        answers: list[str] = []
        for chunk in batches(subset, batch_size):
            answers += encoder.generate(model, [e.text for e in chunk], max_new_tokens)
        metrics |= qa_metrics([e.target or "" for e in subset], answers)
    if generate and exec_tests and task == "causal-lm":
        coded = [e for e in subset if e.tests]
        if coded:
            completions: list[str] = []
            for chunk in batches(coded, max(1, batch_size // 4)):
                completions += encoder.generate(model, [e.text for e in chunk], max_new_tokens)
            metrics["pass_at_1"] = pass_at_1(coded, completions)
            metrics["pass_at_1_n"] = float(len(coded))
    return metrics
