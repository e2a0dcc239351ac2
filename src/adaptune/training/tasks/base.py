"""The task contract: everything ``adaptune train/eval/predict/compare`` needs to know about a task, in one object.

A task says which model class it loads, how examples become a batch, how a model is scored and how it answers
raw texts. Adding a task = one module with a :class:`Task` subclass + one ``register_task`` line in
``tasks/__init__.py``; the CLI choices, the training loop, evaluation and the ranking of compare/sweep runs all
read the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.example import Example

__all__ = ["Encoder", "EvalOptions", "Task", "batches", "device_of", "load_labelled", "load_tokenizer", "progress"]

# Examples -> model inputs (with ``labels`` when the examples carry gold answers).
Encoder = Callable[[Sequence[Example]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class EvalOptions:
    """How to score: batch size, truncation and the (slow) generation settings."""

    labels: Sequence[str] | None = None  # label names, index = class id (tasks with ``needs_labels``)
    batch_size: int = 32
    max_length: int = 128
    generate: bool = True  # also generate answers (qa: exact match / token F1; code: pass@1 with exec_tests)
    generate_limit: int | None = 100  # generate for at most this many examples
    max_new_tokens: int = 64
    exec_tests: bool = False  # run generated code against the example's tests for pass@1


class Task(ABC):
    """One task. Subclasses set the class attributes and implement the four methods.

    Contract:
        - ``load_model(path, labels)`` -> ``(model, tokenizer)`` in fp32, tokenizer with a pad token.
        - ``encoder(tok, labels, max_length)`` -> a function from examples to a batch whose ``labels`` the
          model's ``loss`` reads (the training loop calls ``model(**batch).loss``).
        - ``evaluate(model, tok, examples, options)`` -> metrics, always including ``main_metric``.
        - ``predict(model, tok, texts, options)`` -> one JSON-able dict per text; ``show`` turns one into a line.
    """

    name: ClassVar[str]  # the CLI's --task value and the ``task`` saved in task.json
    main_metric: ClassVar[str]  # the evaluate() key that ranks runs (compare / sweep)
    higher_is_better: ClassVar[bool]
    needs_labels: ClassVar[bool]  # True: the label set shapes the head, so a bare base model cannot run it

    @abstractmethod
    def load_model(self, path: Path, labels: Sequence[str] | None = None) -> tuple[nn.Module, Any]:
        """``(model, tokenizer)`` for this task from a local Hugging Face folder."""

    @abstractmethod
    def encoder(self, tok: Any, labels: Sequence[str] | None, max_length: int) -> Encoder:
        """The batch encoder of training and loss evaluation."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, tok: Any, examples: Sequence[Example], options: EvalOptions
    ) -> dict[str, float]:
        """Task metrics of ``model`` (its active adapters) on ``examples``."""

    @abstractmethod
    def predict(self, model: nn.Module, tok: Any, texts: Sequence[str], options: EvalOptions) -> list[dict[str, Any]]:
        """One prediction per text (JSON-able)."""

    @abstractmethod
    def show(self, text: str, prediction: dict[str, Any]) -> str:
        """A prediction as plain text for the terminal."""

    def check_examples(  # noqa: B027 - an optional hook: most tasks have nothing to check
        self, examples: Sequence[Example], labels: Sequence[str] | None, source: str
    ) -> None:
        """Refuse examples the saved model cannot score (e.g. unknown labels); nothing to check by default."""

    def trained_heads(self, model: nn.Module) -> tuple[str, ...]:
        """Modules of ``model`` beyond ``core.model.DEFAULT_HEADS`` that train and are saved with the adapter (a
        head the task's load initialised from scratch); none by default."""
        return ()

    @property
    def main_metric_key(self) -> str:
        """The key of the main metric in ``metrics.json`` (test split)."""
        return f"test_{self.main_metric}"


# Any of these marks a folder that holds its own tokenizer.
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a local folder, with a pad token (decoder tokenizers often have none; padding positions
    are masked anyway).

    A fully fine-tuned model folder from before ``adaptune train`` saved the tokenizer beside it has none: its
    ``task.json`` names the base model, whose tokenizer it was trained with."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_tokenizer_folder(Path(path)))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _tokenizer_folder(path: Path) -> Path:
    from ...formats.names import TASK_FILE
    from ...util import read_json_object
    from ..assets import resolve_model

    if any((path / f).is_file() for f in _TOKENIZER_FILES) or not (path / TASK_FILE).is_file():
        return path
    base = read_json_object(path / TASK_FILE).get("model")
    if not isinstance(base, str):
        raise ValueError(f"{path}: no tokenizer files, and {path / TASK_FILE} names no base model to take them from")
    return resolve_model(base)


def load_labelled(auto_class: Any, path: Path, names: Sequence[str]) -> nn.Module:
    """``auto_class.from_pretrained(path)`` in fp32 with a head for ``names`` (index = class id), whose names the
    config records (``id2label`` / ``label2id``): the sequence and token classifiers' loader."""
    return auto_class.from_pretrained(
        path,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        dtype=torch.float32,
    )


def set_pad_id(model: nn.Module, tok: Any) -> None:
    """Give the model config the tokenizer's pad id when it has none (batched inputs need one)."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def device_of(model: nn.Module) -> torch.device:
    """Where the model's (first) parameters live: inputs go there."""
    return next(model.parameters()).device


def progress(total: int, desc: str) -> Any:
    """A progress bar that stays quiet off a terminal (``disable=None``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None, leave=False, unit="ex")
