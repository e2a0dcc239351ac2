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
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Print one prediction per text."""
    from ..training.data.datasets import read_texts
    from ..training.tasks import EvalOptions, task_named

    texts = list(a.texts)
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
        predictions = task.predict(model, tok, texts, options)
    for text, pred in zip(texts, predictions, strict=True):
        print(json.dumps({"text": text, **pred}, ensure_ascii=False) if a.jsonl else task.show(text, pred))
    return 0
