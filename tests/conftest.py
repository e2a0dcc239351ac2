"""Shared fixtures: tiny randomly initialised models built from configs (no download)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


def tiny_bert_classifier(seed: int = 0, num_labels: int = 2, layers: int = 4) -> torch.nn.Module:
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


@pytest.fixture
def bert() -> torch.nn.Module:
    return tiny_bert_classifier()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(1))
