"""Scoring a model (with its active adapters) on examples: the registered task's evaluator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .data.example import Example
from .tasks import EvalOptions, lm_loss, task_named
from .tasks.classification import predict_labels

__all__ = ["evaluate", "lm_loss", "predict_labels"]


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
        task: a registered task name (``classification``, ``qa``, ``causal-lm``).
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
    options = EvalOptions(labels, batch_size, max_length, generate, generate_limit, max_new_tokens, exec_tests)
    return task_named(task).evaluate(model, tok, examples, options)
