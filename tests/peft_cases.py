"""The peft interop fixture cases (written by ``tests/fixtures/make_peft_fixtures.py``, read by
``tests/test_peft.py``) and the base models both build."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .tiny_models import build_model

# case -> (model type, method, peft config options, safetensors (else the .bin pickle))
CASES: dict[str, tuple[str, str, dict[str, Any], bool]] = {
    "bert_lora": ("bert", "lora", {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}, True),
    "llama_lora": (
        "llama",
        "lora",
        {"r": 2, "lora_alpha": 3, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]},
        False,
    ),
    "gpt2_lora": ("gpt2", "lora", {"r": 4, "lora_alpha": 16, "target_modules": ["c_attn", "c_proj"]}, True),
    "bert_ia3": ("bert", "ia3", {}, True),  # peft's default targets: key, value, output.dense (feedforward)
    "llama_ia3": ("llama", "ia3", {}, True),  # k_proj, v_proj, down_proj (feedforward)
    "gpt2_ia3": ("gpt2", "ia3", {}, True),  # c_attn, mlp.c_proj (feedforward); Conv1D hosts
}


def deterministic_base(model_type: str) -> nn.Module:
    """The tiny base of ``model_type`` with every parameter drawn from one fixed generator (independent of how a
    Transformers release initialises weights), in eval mode."""
    model = build_model(model_type, seed=0)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model
