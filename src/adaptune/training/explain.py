"""What adapters do, measured on data: fusion attention, each adapter's contribution, gate values.

Everything is read through temporary forward hooks on the adapter modules during one pass over the
examples (removed afterwards); the model is not changed. Per layer and adapter:

- fusion attention: mean softmax weight p_i the fusion gives adapter i (over non-padding tokens), overall and
  per gold class;
- contribution: mean over tokens of ||s·f(h)|| / ||h||, how much the adapter moves the hidden state;
- gate: mean sigmoid gate value, for adapters with ``gate=True``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.contract import AdapterModule, MixerModule
from ..core.slot import AdapterSlot
from ..methods.bottleneck import Bottleneck
from .data.example import Example
from .tasks.classification import tokenize_texts

__all__ = ["collect", "explain"]

Images = dict[str, Path]
Tables = dict[str, list[dict[str, Any]]]


class _Acc:
    """Masked running means keyed by (layer, name), optionally split by class."""

    def __init__(self) -> None:
        self.sums: dict[tuple[Any, ...], torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        self.counts: dict[tuple[Any, ...], float] = defaultdict(float)

    def add(self, key: tuple[Any, ...], values: torch.Tensor, mask: torch.Tensor) -> None:
        # values: (B, T, ...) ; mask: (B, T) -> sum over masked tokens
        m = mask.to(values.dtype).reshape(mask.shape + (1,) * (values.dim() - mask.dim()))
        self.sums[key] = self.sums[key] + (values * m).sum(dim=(0, 1)).detach().cpu()
        self.counts[key] += float(mask.sum())

    def means(self) -> dict[tuple[Any, ...], torch.Tensor]:
        return {k: self.sums[k] / max(1.0, self.counts[k]) for k in self.sums}


def _token_mask(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    # Hooked tensors are (B, T, d) in the blocks we adapt; anything else (flattened MoE input) is skipped.
    return mask if h.dim() == 3 and tuple(h.shape[:2]) == tuple(mask.shape) else None


@torch.no_grad()
def collect(
    model: nn.Module, batches: Sequence[tuple[dict[str, torch.Tensor], list[str | None]]]
) -> dict[str, dict[tuple[Any, ...], torch.Tensor]]:
    """Run ``batches`` of (model inputs, gold labels) and return mean statistics per (layer, adapter[, class])."""
    contrib, gates, attn = _Acc(), _Acc(), _Acc()
    current: dict[str, Any] = {}
    handles = []
    for path, slot in model.named_modules():
        if not isinstance(slot, AdapterSlot):
            continue
        for name, module in slot.items():
            if isinstance(module, AdapterModule):
                # Contribution reads only the contract's forward(x, residual, delta_only): any method.
                handles.append(
                    module.register_forward_hook(
                        _contribution_hook(contrib, current, slot.layer, name), with_kwargs=True
                    )
                )
                # The learned gate is a bottleneck feature (AdapterConfig.gate); other methods have none.
                if isinstance(module, Bottleneck) and module.gate is not None:
                    handles.append(module.gate.register_forward_hook(_gate_hook(gates, current, slot.layer, name)))
            elif isinstance(module, MixerModule):  # contract: forward returns (output, weights over adapters)
                handles.append(module.register_forward_hook(_fusion_hook(attn, current, slot.layer, path)))
    model.eval()
    try:
        for inputs, labels in batches:
            current["mask"] = inputs.get(
                "attention_mask", torch.ones(inputs["input_ids"].shape, dtype=torch.long)
            ).bool()
            current["labels"] = labels
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return {"contribution": contrib.means(), "gate": gates.means(), "fusion": attn.means()}


def _contribution_hook(acc: _Acc, current: dict[str, Any], layer: int, name: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor) -> None:
        x = args[0] if args else kwargs["x"]
        residual = kwargs.get("residual")
        base = x if residual is None else residual
        delta = output if kwargs.get("delta_only") else output - base
        mask = _token_mask(base, current["mask"])
        if mask is not None:
            ratio = delta.float().norm(dim=-1) / base.float().norm(dim=-1).clamp_min(1e-6)
            acc.add((layer, name), ratio, mask)

    return hook


def _gate_hook(acc: _Acc, current: dict[str, Any], layer: int, name: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        mask = _token_mask(output, current["mask"])
        if mask is not None:
            acc.add((layer, name), torch.sigmoid(output.float()).squeeze(-1), mask)

    return hook


def _fusion_hook(acc: _Acc, current: dict[str, Any], layer: int, path: str) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        probs = output[1].float()  # (B, T, n)
        mask = _token_mask(probs, current["mask"])
        if mask is None:
            return
        acc.add((layer, "all"), probs, mask)
        for label in sorted({lab for lab in current["labels"] if lab is not None}):
            rows = torch.tensor([lab == label for lab in current["labels"]])
            acc.add((layer, label), probs[rows], mask[rows])

    return hook


def explain(
    model: nn.Module,
    tok: Any,
    examples: Sequence[Example],
    out_dir: str | Path,
    *,
    fused: Sequence[str] = (),
    batch_size: int = 32,
    max_length: int = 128,
) -> Path:
    """Write ``explain.json``, PNG heatmaps and ``report.md`` for the active setup on ``examples``.

    Args:
        model: the model with its adapters (and fusion) active.
        tok: its tokenizer.
        examples: texts (with gold labels, for per-class fusion attention).
        out_dir: output folder.
        fused: adapter names of the active fusion, in its order (column labels of the attention heatmaps).
        batch_size: examples per forward.
        max_length: truncation length.
    """
    from .report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    batches = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        enc = tokenize_texts(tok, [e.text for e in chunk], max_length)
        batches.append(({k: v.to(device) for k, v in enc.items()}, [e.label for e in chunk]))
    stats = collect(model, batches)
    images: Images = {}
    tables: Tables = {}
    for kind, title in (("contribution", "||s·f(h)|| / ||h||"), ("gate", "mean gate value")):
        if stats[kind]:
            _layer_plot(stats[kind], kind, title, out, images, tables)
    if stats["fusion"]:
        _fusion_plots(stats["fusion"], fused, out, images, tables)
    metrics = {"examples": len(examples), "plots": len(images)}
    return write_report(
        out,
        title="adaptune explain",
        config={"examples": len(examples)},
        metrics=metrics,
        tables=tables,
        images=images,
    )


def _layer_plot(
    data: dict[tuple[Any, ...], torch.Tensor], kind: str, title: str, out: Path, images: Images, tables: Tables
) -> None:
    """A layer x adapter heatmap (and table) of one statistic."""
    from .report import plot_heatmap

    layers = sorted({k[0] for k in data})
    names = sorted({k[1] for k in data})
    matrix = [[float(data.get((layer, n), torch.tensor(float("nan")))) for n in names] for layer in layers]
    rows = [f"layer {x}" for x in layers]
    images[f"{kind} per layer"] = plot_heatmap(
        matrix, out / f"{kind}.png", row_labels=rows, col_labels=names, title=title, fmt=".3f"
    )
    tables[kind] = [
        {"layer": layer, **dict(zip(names, row, strict=True))} for layer, row in zip(layers, matrix, strict=True)
    ]


def _fusion_plots(
    fusion: dict[tuple[Any, ...], torch.Tensor], fused: Sequence[str], out: Path, images: Images, tables: Tables
) -> None:
    """Fusion attention heatmaps: the mean over all tokens, then one per gold class."""
    from .report import plot_heatmap

    groups = sorted({k[1] for k in fusion}, key=lambda g: (g != "all", str(g)))
    layers = sorted({k[0] for k in fusion})
    cols = list(fused) or [f"adapter {i}" for i in range(len(next(iter(fusion.values()))))]
    for group in groups:
        matrix = [fusion[(layer, group)].tolist() for layer in layers if (layer, group) in fusion]
        tag = "mean" if group == "all" else f"class {group}"
        path = out / ("fusion_attention.png" if group == "all" else f"fusion_attention_{group}.png")
        images[f"fusion attention ({tag})"] = plot_heatmap(
            matrix,
            path,
            row_labels=[f"layer {x}" for x in layers],
            col_labels=cols,
            title=f"fusion attention, {tag}",
        )
        tables[f"fusion attention ({tag})"] = [
            {"layer": layer, **dict(zip(cols, row, strict=True))} for layer, row in zip(layers, matrix, strict=True)
        ]
