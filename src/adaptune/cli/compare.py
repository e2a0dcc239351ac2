"""``adaptune compare``: full fine-tuning vs adapter presets on the same data and budget."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.contract import METHODS
from ..training.config import RunConfig
from ..training.experiments import COMPARE_DEFAULTS, COMPARE_OPTIONS, PRESETS
from ..training.options import add_method_options, add_options

__all__ = ["add_experiment_options", "register", "run"]


def add_experiment_options(p: argparse.ArgumentParser) -> None:
    """The options compare and sweep share: RunConfig's data/budget options and the adapters' learning rate."""
    add_options(p, RunConfig, names=COMPARE_OPTIONS, defaults=COMPARE_DEFAULTS)
    p.add_argument("--adapter-lr", type=float, default=1e-3)
    add_method_options(p, METHODS.values())  # passed on to every run of that method


def register(sub: Any) -> None:
    """Add ``compare`` to the sub-commands."""
    p = sub.add_parser("compare", help="full fine-tuning vs adapter configs on the same data and budget")
    add_experiment_options(p)
    p.add_argument(
        "--methods",
        nargs="+",
        default=["bottleneck"],
        choices=sorted(METHODS),
        help="adapter methods to compare (bottleneck runs once per --presets entry)",
    )
    p.add_argument("--presets", nargs="+", default=["pfeiffer"], choices=PRESETS)
    p.add_argument("--reduction-factor", type=float, default=16.0)
    p.add_argument("--full-lr", type=float, default=5e-5, help="learning rate for full fine-tuning")
    p.add_argument("--no-full", action="store_true", help="skip the full fine-tuning run")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Run the comparison (one ``adaptune train`` subprocess per configuration)."""
    from ..training.experiments import run_compare

    return run_compare(a)
