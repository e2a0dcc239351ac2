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
    config = adapter_config_from_args(a)
    print(plan(model, config).table())
    print(_methods_summary(model, config))
    return 0


def _methods_summary(model: Any, chosen: Any) -> str:
    """One line per registered method: its adapter parameters on this model (the chosen config for its method,
    defaults for the others), so `plan` compares methods at a glance."""
    from ..core.contract import METHODS, method_for
    from ..core.model import plan

    rows = ["parameters by method (yours for --method, defaults for the others):"]
    for name, method in sorted(METHODS.items()):
        config = chosen if method_for(chosen) is method else method.config_class()
        try:
            planned = plan(model, config)
            params, places = planned.total_adapter_params, len(planned.targets)
            rows.append(f"  {name:<12} {params:>12,}  {planned.percent:.3f}%  ({places} places)")
        except ValueError as err:  # a method whose default places do not exist in this model
            rows.append(f"  {name:<12} {'-':>12}  not applicable: {err}")
    return "\n".join(rows)
