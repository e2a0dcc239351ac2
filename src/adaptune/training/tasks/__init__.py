"""Tasks: one module per task, each a :class:`Task` (model loader, batch encoder, evaluator, predictor, main
metric), and the registry the CLI, the training run, evaluation and compare/sweep read.

To add a task: write ``tasks/<name>.py`` with a ``Task`` subclass (the contract is in ``base.py``) and add one
``register_task(...)`` line below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .base import EvalOptions, Task, batches
from .causal_lm import CausalLm
from .classification import Classification, classification_metrics, encode_classification, tokenize_texts
from .extractive_qa import ExtractiveQa
from .language_modeling import LanguageModeling
from .lm import LmEncoder, lm_loss, perplexity, token_loss_sums
from .qa import Qa, qa_metrics
from .registry import TASKS, register_task, task_named, task_names
from .token_classification import TokenClassification

__all__ = [
    "TASKS",
    "EvalOptions",
    "LmEncoder",
    "Task",
    "batches",
    "classification_metrics",
    "encode_classification",
    "lm_loss",
    "load_model",
    "perplexity",
    "qa_metrics",
    "register_task",
    "task_named",
    "task_names",
    "token_loss_sums",
    "tokenize_texts",
]

register_task(Classification())
register_task(Qa())
register_task(CausalLm())
register_task(ExtractiveQa())
register_task(LanguageModeling())
register_task(TokenClassification())


def load_model(task: str, path: Path, labels: Sequence[str] | None = None) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` for ``task`` from a local Hugging Face folder, in fp32."""
    return task_named(task).load_model(path, labels)
