"""adaptune: bottleneck adapters for any Hugging Face Transformers 5 model, attached through hooks.

Quick start::

    import adaptune
    adaptune.add_adapter(model, "sentiment", adaptune.AdapterConfig.pfeiffer(reduction_factor=16))
    adaptune.train_adapter(model, "sentiment")          # base frozen; adapter + task head train
    adaptune.save_adapter(model, "sentiment", "out/sentiment")
    adaptune.load_adapter(other_model, "out/sentiment")
"""

__version__ = "0.1.0"

from .config import AdapterConfig, parse_layers
from .io import fingerprint, load_adapter, save_adapter
from .model import (
    DEFAULT_HEADS,
    ParamSummary,
    Plan,
    active_adapters,
    adapter_config,
    adapter_modules,
    adapter_targets,
    add_adapter,
    check_adapters_fire,
    delete_adapter,
    head_modules,
    list_adapters,
    plan,
    set_active,
    train_adapter,
    trainable_summary,
)
from .modules import Bottleneck
from .placement import Block, Target, find_blocks, find_targets

__all__ = [
    "DEFAULT_HEADS",
    "AdapterConfig",
    "Block",
    "Bottleneck",
    "ParamSummary",
    "Plan",
    "Target",
    "__version__",
    "active_adapters",
    "adapter_config",
    "adapter_modules",
    "adapter_targets",
    "add_adapter",
    "check_adapters_fire",
    "delete_adapter",
    "find_blocks",
    "find_targets",
    "fingerprint",
    "head_modules",
    "list_adapters",
    "load_adapter",
    "parse_layers",
    "plan",
    "save_adapter",
    "set_active",
    "train_adapter",
    "trainable_summary",
]
