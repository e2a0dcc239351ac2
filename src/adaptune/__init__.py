"""adaptune: bottleneck adapters for any Hugging Face Transformers 5 model, attached through hooks.

Quick start::

    import adaptune
    adaptune.add_adapter(model, "sentiment", adaptune.AdapterConfig.pfeiffer(reduction_factor=16))
    adaptune.train_adapter(model, "sentiment")          # base frozen; adapter + task head train
    adaptune.save_adapter(model, "sentiment", "out/sentiment")
    adaptune.load_adapter(other_model, "out/sentiment")
"""

from .version import __version__  # noqa: I001 (first: every layer reads it)
from . import methods  # noqa: F401 (registers the adapter methods with the core)
from .core.base_dropout import set_base_dropout
from .core.precision import Precision, autocast, resolve_precision, set_precision
from .core.composition import Average, Fuse, Parallel, PerExample, Stack
from .core.parallel import split_parallel
from .core.config import MethodConfig, parse_layers
from .methods.fusion import (
    Fusion,
    add_fusion,
    average_adapters,
    delete_fusion,
    fusion_modules,
    fusion_value_loss,
    list_fusions,
    train_fusion,
)
from .formats.fusion import load_fusion, save_fusion
from .formats.native import fingerprint, load_adapter, save_adapter
from .formats.peft import load_peft, save_peft
from .formats.pretrained import load_pretrained, save_pretrained
from .core.model import (
    DEFAULT_HEADS,
    ParamSummary,
    Plan,
    active_adapters,
    active_setup,
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
    set_adapter_drop,
    train_adapter,
    trainable_summary,
)
from .methods.bottleneck import AdapterConfig, Bottleneck
from .methods.compacter import CompacterConfig
from .methods.ia3 import IA3Config
from .methods.invertible import InvertibleConfig
from .methods.lora import LoraConfig
from .methods.mix import MixConfig
from .methods.merge import merge_adapter, unmerge_adapter
from .methods.prefix import PrefixConfig, fold_prefix
from .methods.prompt import PromptConfig
from .core.placement import Block, Target, find_blocks, find_targets

__all__ = [
    "DEFAULT_HEADS",
    "AdapterConfig",
    "Average",
    "Block",
    "Bottleneck",
    "CompacterConfig",
    "Fuse",
    "Fusion",
    "IA3Config",
    "InvertibleConfig",
    "LoraConfig",
    "MethodConfig",
    "MixConfig",
    "Parallel",
    "ParamSummary",
    "PerExample",
    "Plan",
    "Precision",
    "PrefixConfig",
    "PromptConfig",
    "Stack",
    "Target",
    "__version__",
    "active_adapters",
    "active_setup",
    "adapter_config",
    "adapter_modules",
    "adapter_targets",
    "add_adapter",
    "add_fusion",
    "autocast",
    "average_adapters",
    "check_adapters_fire",
    "delete_adapter",
    "delete_fusion",
    "find_blocks",
    "find_targets",
    "fingerprint",
    "fold_prefix",
    "fusion_modules",
    "fusion_value_loss",
    "head_modules",
    "list_adapters",
    "list_fusions",
    "load_adapter",
    "load_fusion",
    "load_peft",
    "load_pretrained",
    "merge_adapter",
    "parse_layers",
    "plan",
    "resolve_precision",
    "save_adapter",
    "save_fusion",
    "save_peft",
    "save_pretrained",
    "set_active",
    "set_adapter_drop",
    "set_base_dropout",
    "set_precision",
    "split_parallel",
    "train_adapter",
    "train_fusion",
    "trainable_summary",
    "unmerge_adapter",
]
