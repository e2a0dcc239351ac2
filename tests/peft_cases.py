"""The peft interop fixture cases (written by ``tests/fixtures/make_peft_fixtures.py``, read by
``tests/test_peft.py`` and ``tests/test_peft_prompt.py``) and the base models both build."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from .tiny_models import build_model, tiny_config

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

# Prompt learning: case -> (model type, peft task_type, peft method, peft config options). peft 0.21.2 cannot run
# SEQ_CLS prefix tuning on Transformers 5 (it looks for ``past_key_values`` in the task model's signature), so the
# BERT prefix cases use the bare encoder (FEATURE_EXTRACTION).
PROMPT_CASES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "bert_prompt": ("bert", "SEQ_CLS", "prompt", {"num_virtual_tokens": 4}),
    "bert_prefix": ("bert", "FEATURE_EXTRACTION", "prefix", {"num_virtual_tokens": 3}),
    "bert_prefix_proj": (
        "bert",
        "FEATURE_EXTRACTION",
        "prefix",
        {"num_virtual_tokens": 3, "prefix_projection": True, "encoder_hidden_size": 16},
    ),
    "llama_prompt": ("llama", "CAUSAL_LM", "prompt", {"num_virtual_tokens": 4}),
    "llama_prefix": ("llama", "CAUSAL_LM", "prefix", {"num_virtual_tokens": 3}),
    "llama_prefix_proj": (
        "llama",
        "CAUSAL_LM",
        "prefix",
        {"num_virtual_tokens": 3, "prefix_projection": True, "encoder_hidden_size": 24},
    ),
    "gpt2_prompt": ("gpt2", "CAUSAL_LM", "prompt", {"num_virtual_tokens": 2}),
    "gpt2_prefix_proj": (
        "gpt2",
        "CAUSAL_LM",
        "prefix",
        {"num_virtual_tokens": 2, "prefix_projection": True, "encoder_hidden_size": 16},
    ),
}
_TASK_CLASSES = {
    "SEQ_CLS": transformers.AutoModelForSequenceClassification,
    "CAUSAL_LM": transformers.AutoModelForCausalLM,
}


def _fill(model: nn.Module) -> nn.Module:
    """Every parameter from one fixed generator (independent of how a Transformers release initialises weights)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def deterministic_base(model_type: str) -> nn.Module:
    """The tiny base of ``model_type`` with every parameter drawn from one fixed generator (independent of how a
    Transformers release initialises weights), in eval mode."""
    return _fill(build_model(model_type, seed=0))


def task_base(model_type: str, task_type: str) -> nn.Module:
    """The tiny ``model_type`` as peft's ``task_type`` wants it (a sequence classifier with 2 labels, a causal LM,
    else the bare model), every parameter from the fixed generator, fp32, eval mode."""
    if task_type not in _TASK_CLASSES:
        return deterministic_base(model_type)
    model = _TASK_CLASSES[task_type].from_config(tiny_config(model_type), attn_implementation="eager")
    return _fill(model.float()).eval()
