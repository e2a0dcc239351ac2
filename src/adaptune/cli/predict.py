"""``adaptune predict``: labels / answers / completions for texts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_setup_options, inference_context, load_adapted

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add ``predict`` to the sub-commands."""
    p = sub.add_parser("predict", help="labels / answers / completions for texts")
    add_setup_options(p)
    p.add_argument("texts", nargs="*", help="texts (or use --file; '-' reads stdin)")
    p.add_argument("--file", help="a .txt (one text per line) or .jsonl (field 'text') file; '-' = stdin")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--jsonl", action="store_true", help="one JSON object per line")
    p.add_argument("--context", help="extractive-qa: the passage the texts (questions) are asked about")
    p.add_argument("--pairs", metavar="JSONL", help="extractive-qa: .jsonl, 'question' + 'context' per line")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Print one prediction per text."""
    from ..training.data.datasets import read_texts
    from ..training.tasks import EvalOptions, task_named

    texts, contexts = _qa_pairs(a)
    if a.file:
        texts += read_texts(a.file)
    if texts == ["-"]:
        texts = read_texts("-")
    if not texts:
        raise ValueError("predict: no texts (give them as arguments, with --file, or '-' for stdin)")
    model, tok, info = load_adapted(a)
    task = task_named(info["task"])
    options = EvalOptions(
        labels=info.get("labels"),
        batch_size=a.batch_size,
        max_length=info.get("max_length", 128),
        max_new_tokens=a.max_new_tokens,
    )
    with inference_context(model, info):
        if contexts is not None or a.context is not None:
            predictions = _answer(task, model, tok, texts, contexts or [a.context] * len(texts), options)
        else:
            predictions = task.predict(model, tok, texts, options)
    for text, pred in zip(texts, predictions, strict=True):
        print(json.dumps({"text": text, **pred}, ensure_ascii=False) if a.jsonl else task.show(text, pred))
    return 0


def _qa_pairs(a: argparse.Namespace) -> tuple[list[str], list[str] | None]:
    """The texts given as arguments, or the questions and contexts of ``--pairs`` (which stands alone)."""
    if a.pairs is None:
        return list(a.texts), None
    if a.texts or a.file or a.context is not None:
        raise ValueError("--pairs: the file holds the questions and contexts; give no texts, --file or --context")
    from ..training.data.squad import read_qa_pairs

    questions, contexts = read_qa_pairs(a.pairs)
    return questions, contexts


def _answer(task: Any, model: Any, tok: Any, questions: list[str], contexts: list[str], options: Any) -> list[Any]:
    """Answers to questions about passages (``--context`` / ``--pairs``), for a task that takes them."""
    from ..training.tasks.extractive_qa import ExtractiveQa

    if not isinstance(task, ExtractiveQa):
        raise ValueError(f"--context / --pairs: they are for extractive-qa; this model's task is {task.name}")
    return task.answer(model, tok, questions, contexts, options)
