"""``adaptune train``: train an adapter (or fully fine-tune) and write a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..training.config import RunConfig
from ..training.options import add_options, values_from_args
from .common import adapter_config_from_args, add_adapter_options

__all__ = ["register", "run", "train_and_report"]


def register(sub: Any) -> None:
    """Add ``train`` to the sub-commands."""
    p = sub.add_parser("train", help="train an adapter (or fully fine-tune) and write a report")
    add_options(p, RunConfig, command="train")
    add_adapter_options(p)
    p.add_argument("--full-finetune", action="store_true", help="train every weight instead of an adapter")
    p.set_defaults(func=run)


def train_and_report(cfg: RunConfig, saved: str) -> int:
    """Run a training, print its test metrics and where the result (``OUT/<saved>``) and report are."""
    from ..training.run import run_training

    result = run_training(cfg)
    print(json.dumps({k: v for k, v in result.metrics.items() if k.startswith("test_")}))
    print(f"{saved}: {Path(cfg.out) / saved}  report: {Path(cfg.out) / 'report'}")
    return 0


def run(a: argparse.Namespace) -> int:
    """Train what the options describe."""
    adapter = None if a.full_finetune else adapter_config_from_args(a)
    cfg = RunConfig(**values_from_args(RunConfig, a), adapter=adapter)
    return train_and_report(cfg, "model" if a.full_finetune else "adapter")
