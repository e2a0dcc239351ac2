"""Turn dropout off inside the frozen pretrained body while adapters and the head train.

Dropout in a frozen base costs a lot on CPU and buys little: drawing the masks (``bernoulli_``) was 23% of a
MiniLM pfeiffer training step here, and attention dropout keeps ``scaled_dot_product_attention`` off its fused
kernel, so the attention matrix is stored for backward. With base dropout off the frozen body computes what
it computes at inference; the adapters' own dropout (``AdapterConfig.dropout``) and the head's dropout still
apply. It is a training-recipe choice, not an exact rewrite: full fine-tuning and AdapterHub keep base dropout.

Implemented as forward pre-hooks that put each base ``nn.Dropout`` and each base attention module (which pass
``dropout=p if self.training else 0`` to the attention kernel) in eval mode just before it runs, so it
survives ``model.train()`` calls (Hugging Face's Trainer calls it every step). Blocks keep their training flag:
gradient checkpointing and the adapters inside them see ``training=True``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .model import DEFAULT_HEADS, head_modules
from .placement import is_adaptune_path

__all__ = ["base_dropout_modules", "set_base_dropout"]


def _eval_before_forward(module: nn.Module, args: tuple[object, ...]) -> None:
    module.training = False


def base_dropout_modules(model: nn.Module, heads: Iterable[str] = DEFAULT_HEADS) -> list[str]:
    """Paths of the modules ``set_base_dropout(model, False)`` affects: ``nn.Dropout`` and attention modules
    of the pretrained body (not ours, not in a head, not the top-level dropout that feeds the head)."""
    head_paths = tuple(head_modules(model, heads))
    found = []
    for path, m in model.named_modules():
        if not path or is_adaptune_path(path) or ("." not in path and isinstance(m, nn.Dropout)):
            continue  # the root, adapters/fusion, and a head dropout sitting on the root (model.dropout)
        if any(path == h or path.startswith(h + ".") for h in head_paths):
            continue
        if isinstance(m, nn.Dropout) or type(m).__name__.endswith("Attention"):
            found.append(path)
    return found


def set_base_dropout(model: nn.Module, enabled: bool, heads: Iterable[str] = DEFAULT_HEADS) -> int:
    """Keep (``enabled=True``, the default state) or switch off dropout in the frozen pretrained body.

    Returns the number of modules switched to eval mode (0 when enabling). Calling it again replaces the
    previous setting; the hooks travel with ``copy.deepcopy``.
    """
    for m in model.modules():
        for key, hook in list(m._forward_pre_hooks.items()):
            if hook is _eval_before_forward:
                del m._forward_pre_hooks[key]
    if enabled:
        return 0
    paths = base_dropout_modules(model, heads)
    for path in paths:
        model.get_submodule(path).register_forward_pre_hook(_eval_before_forward)
    return len(paths)
