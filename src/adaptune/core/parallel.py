"""``Parallel(a, b, ...)``: k setups on the same batch in one forward pass, each with its own output rows.

The slot's handler runs child i on rows ``[i·B, (i+1)·B)`` (``slot.AdapterSlot._parallel``); this module makes
the batch k·B rows long before the first adapted place, by one of two paths that ``set_active`` picks:

    blocks:  embeddings -> blocks below the first adapted one (B rows, run once)
             -> pre-hook on every block from the first adapted one: repeat each tensor argument whose leading
                dimension is B (hidden states, attention masks, rotary cos/sin, encoder states and masks)
             -> k·B rows to the end (a decoder stack wholly above the first adapted block is hooked at its
                entry too: it builds its cross-attention mask from the encoder's k·B rows before any block)
    entry:   pre-hook on the model itself: repeat every input tensor whose leading dimension is B (input_ids,
             attention_mask, token_type_ids, decoder_input_ids, labels, pixel values ...); the whole model runs
             on k·B rows, so it is correct whatever the model does with its inputs

Hooks cannot repeat a mid-block tensor safely (q would have k·B rows while k and v keep B), so the efficient
path replicates at a *block* boundary. It is taken when the model's code around the blocks only passes
batch-leading tensors to them and its head reads nothing but the blocks' output:

- blocks: base models (``*Model``) and ``*ForCausalLM`` / ``*ForMaskedLM`` / ``*ForTokenClassification`` /
  ``*ForConditionalGeneration`` heads of every family in the tiny matrix except those below, and encoder
  sequence-classification / QA heads (``classifier`` / ``qa_outputs``: they read the blocks' output). Labels are
  repeated at the entry so a loss compares k·B rows with k·B labels.
- entry: ``ENTRY_FAMILIES`` (a block argument is batch-folded, e.g. BLOOM's ALiBi is (B·heads, 1, T), or the
  batch is not the leading dimension inside the blocks); decoder-style ``score`` heads and BART-style
  classification heads (they pick each row's last / EOS token from ``input_ids`` of B rows after the blocks);
  multiple-choice heads (the blocks see B·choices rows); any active adapter outside the blocks; a model with no
  block list found.

Either way the model's outputs have k·B rows in block order; ``split_parallel`` cuts them apart. Not supported:
``generate`` and a KV cache passed in (``past_key_values`` / ``cache``: refused), and models whose outputs mix
examples (CLIP's image-text logits compare every row with every row, so they are not k separate results). Under the
blocks path, ``output_hidden_states`` and a returned KV cache hold B rows below the first adapted block and k·B
above it.
The path is chosen when ``set_active`` runs: call it again after adding adapters at other places.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .composition import Parallel
from .placement import find_blocks

__all__ = [
    "ENTRY_FAMILIES",
    "ParallelRouter",
    "install_parallel",
    "parallel_path",
    "remove_parallel",
    "split_parallel",
]

# model_type -> why the batch is replicated at the entry rather than at the first adapted block
ENTRY_FAMILIES: dict[str, str] = {
    "bloom": "ALiBi biases reach the blocks folded with the heads, (B·heads, 1, T)",
    "falcon": "ALiBi / rotary tensors may reach the blocks folded with the heads",
    "squeezebert": "its encoder calls each block's forward() directly, so block hooks never run",
    "wav2vec2": "it returns conv features computed below the blocks (extract_features) beside the blocks' output",
    "clip": "two towers whose outputs are compared across rows",
}
# The first of these the model takes is the batch size the replication keys on.
_BATCH_INPUTS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features", "decoder_input_ids")
# Keyword arguments that are never batch-leading even when their length happens to equal B.
_NOT_BATCH = frozenset({"cache_position"})
# Heads that read only the blocks' output (class-name suffixes).
_BLOCK_SAFE_HEADS = ("Model", "ForCausalLM", "ForMaskedLM", "ForTokenClassification", "ForConditionalGeneration")
_ENCODER_HEADS = ("ForSequenceClassification", "ForQuestionAnswering")


def split_parallel(output: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Cut a k·B-row output of a model under ``Parallel`` of k children into the k children's B-row outputs.

    Raises:
        ValueError: the leading dimension is not a multiple of ``k``.
    """
    if k < 1 or output.shape[0] % k:
        raise ValueError(f"split_parallel: leading dimension {output.shape[0]} is not a multiple of k={k}")
    return tuple(output.split(output.shape[0] // k))


def parallel_path(model: nn.Module, adapted_layers: list[int]) -> tuple[str, str]:
    """``("blocks", why)`` or ``("entry", why)``: where the batch is replicated for ``model`` (see the module
    docstring); ``adapted_layers`` holds the block index of each slot an active adapter runs in (-1: outside)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    name = type(model).__name__
    if model_type in ENTRY_FAMILIES:
        return "entry", ENTRY_FAMILIES[model_type]
    if not adapted_layers or min(adapted_layers) < 0:
        return "entry", "an active adapter sits outside the transformer blocks"
    encoder_head = name.endswith(_ENCODER_HEADS) and not getattr(config, "is_encoder_decoder", False)
    if encoder_head and not hasattr(model, "score"):
        return "blocks", "an encoder head reads only the blocks' output"
    if not name.endswith(_BLOCK_SAFE_HEADS):
        return "entry", f"{name}'s head may read inputs of the original batch size after the blocks"
    try:
        find_blocks(model)
    except ValueError:
        return "entry", "no block list found"
    return "blocks", "the blocks receive only batch-leading tensors and the head reads only their output"


class ParallelRouter:
    """The hooks that replicate the batch k times for a ``Parallel`` (one router per activation).

    It keeps no tensors: ``batch`` is the original batch size B of the forward in progress (set by the model's
    pre-hook, cleared by its forward hook). Hooks are bound methods, so ``copy.deepcopy`` of the model rebinds them.
    """

    def __init__(self, k: int, path: str) -> None:
        self.k = k
        self.path = path
        self.batch: int | None = None
        self.handles: list[RemovableHandle] = []

    def install(self, model: nn.Module, blocks: list[nn.Module]) -> None:
        """Hook ``model`` (entry) and, for the blocks path, ``blocks`` (from the first adapted one on)."""
        self.handles.append(model.register_forward_pre_hook(self._enter, with_kwargs=True))
        self.handles.append(model.register_forward_hook(self._leave, with_kwargs=True))
        for block in blocks:
            self.handles.append(block.register_forward_pre_hook(self._before_block, with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:  # generate passes one
            raise RuntimeError(
                "adaptune: Parallel runs plain forward passes; generate and a past_key_values cache are not "
                "supported (each child's rows would need their own decoding loop)"
            )
        first = next((kwargs[n] for n in _BATCH_INPUTS if isinstance(kwargs.get(n), torch.Tensor)), None)
        if first is None and args and isinstance(args[0], torch.Tensor):
            first = args[0]
        if first is None:
            raise RuntimeError("adaptune: Parallel found no input tensor (input_ids, inputs_embeds, ...) to batch")
        self.batch = first.shape[0]
        if self.path == "entry":
            return self._repeat(args), {n: v if n in _NOT_BATCH else self._repeat(v) for n, v in kwargs.items()}
        if "labels" in kwargs:  # the loss then compares k·B logits rows with k·B labels
            return args, {**kwargs, "labels": self._repeat(kwargs["labels"])}
        return None

    def _leave(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        self.batch = None

    def _before_block(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.batch is None:  # the block was called outside the model's forward: nothing to key on
            return None
        return self._repeat(args), {n: v if n in _NOT_BATCH else self._repeat(v) for n, v in kwargs.items()}

    def _repeat(self, value: Any) -> Any:
        """``value`` with every tensor of leading dimension B repeated k times (block order), in tuples too."""
        if isinstance(value, torch.Tensor):
            if value.dim() and value.shape[0] == self.batch:
                return value.repeat(self.k, *([1] * (value.dim() - 1)))
            return value
        if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
            return type(value)(self._repeat(v) for v in value)
        return value


def install_parallel(model: nn.Module, setup: Parallel, adapted_layers: list[int]) -> ParallelRouter | None:
    """Create and hook the router for ``setup`` (``None`` when k = 1: nothing to replicate)."""
    if len(setup.children) < 2:
        return None
    path, _ = parallel_path(model, adapted_layers)
    router = ParallelRouter(len(setup.children), path)
    router.install(model, _replicating_modules(model, min(adapted_layers)) if path == "blocks" else [])
    return router


def _replicating_modules(model: nn.Module, first: int) -> list[nn.Module]:
    """The blocks from index ``first`` on, and every stack (the module holding a block list, e.g. a decoder)
    whose blocks all come after ``first``: such a stack builds masks from its inputs and the encoder's k·B-row
    states before its first block runs, so it must see k·B rows from its entry."""
    blocks = find_blocks(model)
    modules: list[nn.Module] = []
    stacks: dict[str, int] = {}  # stack path -> index of its first block
    for b in blocks:
        stacks.setdefault(b.path.rpartition(".")[0].rpartition(".")[0], b.index)
        if b.index >= first:
            modules.append(model.get_submodule(b.path))
    modules += [model.get_submodule(path) for path, start in stacks.items() if path and start > first]
    return modules


def remove_parallel(routers: list[ParallelRouter | None]) -> None:
    """Unhook routers (the same router may appear several times)."""
    for router in {id(r): r for r in routers if r is not None}.values():
        router.remove()
