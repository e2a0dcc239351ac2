"""``adaptune sweep``: short runs over placements x layer sets x reduction factors."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.contract import DEFAULT_METHOD, METHODS
from .compare import add_experiment_options

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add ``sweep`` to the sub-commands."""
    p = sub.add_parser("sweep", help="short runs over placements x layers x reduction factors")
    add_experiment_options(p)
    p.add_argument(
        "--method",
        choices=sorted(METHODS),
        default=DEFAULT_METHOD,
        help="bottleneck: placements x layer sets x reduction factors; another method: layer sets, with its options",
    )
    p.add_argument("--placements", nargs="+", default=["attention", "ffn", "both", "parallel"])
    p.add_argument("--layer-sets", nargs="+", default=["all", "top-half", "last:2"])
    p.add_argument("--reduction-factors", nargs="+", type=float, default=[16.0, 64.0])
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Run the sweep (one ``adaptune train`` subprocess per configuration)."""
    from ..training.experiments import run_sweep

    return run_sweep(a)
