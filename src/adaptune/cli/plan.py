"""``adaptune plan``: where adapters would go and what they cost."""

from __future__ import annotations

import argparse
from typing import Any

from ..training.tasks import task_names
from .common import adapter_config_from_args, add_adapter_options

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add ``plan`` to the sub-commands."""
    p = sub.add_parser("plan", help="where adapters would go and what they cost")
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", choices=task_names())
    add_adapter_options(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Print the placement table."""
    import torch
    from transformers import AutoConfig, AutoModel

    from ..core.model import plan
    from ..training.assets import resolve_model

    path = resolve_model(a.model)
    # Empty weights are enough to plan: build on the meta device, no memory, no loading time.
    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(path))
    print(plan(model, adapter_config_from_args(a)).table())
    return 0
