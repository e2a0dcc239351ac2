"""The model of a run: the task's model with the adapter / fusion added and set to train, its FSDP rebuild, and
what is saved at the end (adapter / fusion folder or the full model, plus ``task.json``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..core.base_dropout import set_base_dropout
from ..core.composition import Stack
from ..core.model import DEFAULT_HEADS, add_adapter, head_modules, train_adapter, trainable_summary
from ..core.precision import Precision, resolve_precision, set_precision
from ..formats.detect import unique_name
from ..formats.names import TASK_FILE
from ..formats.native import load_adapter, save_adapter
from ..util import write_json_atomic
from .assets import resolve_model
from .config import RunConfig
from .data.datasets import Dataset
from .tasks import task_named

__all__ = ["build_model", "rebuild_unsharded", "run_heads", "save_result", "set_run_precision"]


def run_heads(cfg: RunConfig, model: torch.nn.Module) -> tuple[str, ...]:
    """The modules that train and are saved with the adapter: the default task heads, a head the task initialised
    from scratch (a masked-LM head for a checkpoint without one), and ``--train-modules``."""
    return (*DEFAULT_HEADS, *task_named(cfg.task).trained_heads(model), *cfg.train_modules)


def build_model(cfg: RunConfig, data: Dataset) -> tuple[torch.nn.Module, Any, Any, Any]:
    """The model for this run with its adapter / fusion added and set to train: (model, tokenizer, fusion, summary)."""
    model, tok = task_named(cfg.task).load_model(resolve_model(cfg.model), data.labels)
    missing = [m for m in cfg.train_modules if m not in head_modules(model, cfg.train_modules)]
    if missing:
        raise ValueError(f"--train-modules: {type(model).__name__} has no module {missing[0]!r}")
    heads = run_heads(cfg, model)
    if cfg.stack_on and (cfg.adapter is None or cfg.fuse_from):
        raise ValueError("--stack-on trains a new adapter on top of saved ones: not with --full-finetune or fuse")
    fuse = None
    if cfg.fuse_from:
        from ..methods.fusion import add_fusion, train_fusion

        names = [
            load_adapter(model, d, name=unique_name(model, d), activate=False, load_head=False) for d in cfg.fuse_from
        ]
        fuse = add_fusion(model, names)
        summary = train_fusion(model, fuse, heads=heads, regularization=cfg.fusion_reg)
    elif cfg.adapter is not None and cfg.stack_on:
        below = [
            load_adapter(model, d, name=unique_name(model, d), activate=False, load_head=False) for d in cfg.stack_on
        ]
        if cfg.name in below:
            raise ValueError(f"--name {cfg.name!r} is taken by a --stack-on adapter; pick another --name")
        add_adapter(model, cfg.name, cfg.adapter, activate=False)
        summary = train_adapter(model, cfg.name, heads=heads, setup=Stack(*below, cfg.name))
    elif cfg.adapter is not None:
        add_adapter(model, cfg.name, cfg.adapter)
        summary = train_adapter(model, cfg.name, heads=heads)
    else:
        if not cfg.base_dropout:
            raise ValueError("--base-dropout off: full fine-tuning has no frozen base; give an adapter")
        for p in model.parameters():
            p.requires_grad_(True)
        summary = trainable_summary(model)
    if not cfg.base_dropout:
        set_base_dropout(model, False, heads)
    return model, tok, fuse, summary


def set_run_precision(cfg: RunConfig, model: torch.nn.Module, device: torch.device, sharded: bool) -> Precision:
    """Resolve ``cfg.precision`` for ``device`` and apply it to the model of this run (call after the trainable set is
    decided and before the optimizer exists): adapter / fusion runs store the frozen base in the low precision and
    keep every trainable tensor in fp32; full fine-tuning keeps fp32 weights (mixed precision by autocast only)."""
    precision = resolve_precision(cfg.precision, device)
    if sharded and precision.is_reduced:
        # FSDP2 all-gathers a block's parameters in one buffer of one dtype: the frozen base stays fp32 there.
        precision = dataclasses.replace(
            precision,
            storage_dtype=torch.float32,
            reason=f"{precision.reason}; base kept fp32 under FSDP (one dtype per sharded block)",
        )
    return set_precision(model, precision, frozen_base=cfg.adapter is not None or bool(cfg.fuse_from))


def rebuild_unsharded(cfg: RunConfig, data: Dataset, trained: dict[str, torch.Tensor]) -> torch.nn.Module:
    """After an FSDP run, rank 0 rebuilds a plain (unsharded) model from the base and the gathered trainable
    tensors, to evaluate and save without the other processes."""
    model, _, _, _ = build_model(cfg, data)
    _, unexpected = model.load_state_dict(trained, strict=False)
    lost = [n for n, p in model.named_parameters() if p.requires_grad and n not in trained]
    if unexpected or lost:  # the rebuild must be the trained model, tensor for tensor
        raise RuntimeError(f"rebuilding the FSDP-trained model: unexpected {unexpected[:3]}, not trained {lost[:3]}")
    return model


def save_result(cfg: RunConfig, model: torch.nn.Module, out: Path, labels: list[str] | None, fuse: Any = None) -> int:
    """Save the adapter / fusion (+ head) or, for full fine-tuning, the whole model; return bytes on disk."""
    if fuse is not None:
        from ..formats.fusion import save_fusion

        folder = save_fusion(model, fuse, out / "fusion", heads=run_heads(cfg, model))
    elif cfg.adapter is not None:
        folder = save_adapter(model, cfg.name, out / "adapter", heads=run_heads(cfg, model))
    else:
        folder = out / "model"
        model.save_pretrained(folder)
    # What eval/predict need to rebuild the model around the adapter.
    info = {"task": cfg.task, "labels": labels, "model": cfg.model, "max_length": cfg.max_length}
    if cfg.stack_on:  # trained on top of these (eval: --adapter THEM... OUT/adapter --setup 'Stack(...)')
        info["stacked_on"] = [str(Path(d).resolve()) for d in cfg.stack_on]
    write_json_atomic(folder / TASK_FILE, info)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
