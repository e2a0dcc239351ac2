"""``adaptune eval``: metrics of a saved adapter (or composition, or base model) on data."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import (
    add_data_options,
    add_setup_options,
    add_split_option,
    examples_from_args,
    inference_context,
    load_adapted,
)

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add ``eval`` to the sub-commands."""
    p = sub.add_parser("eval", help="metrics of a saved adapter on data")
    add_setup_options(p)
    add_data_options(p)
    add_split_option(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int)
    p.add_argument("--exec-tests", action="store_true", help="code data: run generated code for pass@1")
    p.add_argument("--generate-limit", type=int, default=50, help="generate for at most N examples (qa/code)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="generation budget per example")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Print the task's metrics."""
    from ..training.tasks import task_named

    model, tok, info = load_adapted(a)
    task = task_named(info["task"])
    examples = examples_from_args(a, task.name)
    task.check_examples(examples, info.get("labels"), a.data)
    from ..training.evaluate import evaluate

    with inference_context(model, info):
        metrics = evaluate(
            task.name,
            model,
            tok,
            examples,
            labels=info.get("labels"),
            batch_size=a.batch_size,
            max_length=a.max_length or info.get("max_length", 128),
            generate_limit=a.generate_limit,
            exec_tests=a.exec_tests,
            max_new_tokens=a.max_new_tokens,
        )
    if a.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>14}  {v:.4f}")
    return 0
