"""``adaptune explain``: plots of fusion attention, adapter contributions and gates on data."""

from __future__ import annotations

import argparse
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
    """Add ``explain`` to the sub-commands."""
    p = sub.add_parser("explain", help="plots of fusion attention, adapter contributions and gates on data")
    add_setup_options(p, required=True)
    add_data_options(p)
    add_split_option(p)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Write the explain report and print where it is."""
    from ..core.composition import Fuse
    from ..core.model import active_setup
    from ..training.explain import explain

    model, tok, info = load_adapted(a)
    examples = examples_from_args(a, info["task"])
    setup = active_setup(model)
    fused = list(setup.children) if isinstance(setup, Fuse) else []
    max_length = a.max_length or info.get("max_length", 128)
    with inference_context(model, info):
        report = explain(model, tok, examples, a.out, fused=fused, batch_size=a.batch_size, max_length=max_length)
    print(f"report: {report}")
    return 0
