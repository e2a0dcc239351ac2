"""``adaptune fuse``: train an AdapterFusion over saved adapters (they stay frozen)."""

from __future__ import annotations

import argparse
from typing import Any

from ..training.config import RunConfig
from ..training.options import add_options, values_from_args
from .train import train_and_report

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add ``fuse`` to the sub-commands."""
    p = sub.add_parser("fuse", help="train an AdapterFusion over saved adapters (they stay frozen)")
    add_options(p, RunConfig, command="fuse")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Train the fusion of ``--adapters``."""
    if len(a.fuse_from) < 2:
        raise ValueError("fuse: give at least two --adapters folders")
    return train_and_report(RunConfig(**values_from_args(RunConfig, a), adapter=None), "fusion")
