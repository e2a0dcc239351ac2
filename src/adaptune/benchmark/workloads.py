"""The models and steps the benchmark times: adaptune configurations, full fine-tuning, ``peft`` LoRA and
AdapterHub ``adapters`` (the last two imported only when asked for, in whichever venv has them).

A configuration is a string: ``full``, ``base`` (untouched model, inference), an adaptune preset
(``pfeiffer``, ``houlsby``, ``parallel``, ``pfeiffer_top_half``, ``fusion3``, ``mixed8``), another adaptune method
(``lora``, ``lora_merged``, ``ia3``), ``peft_lora``, ``peft_lora_merged``, ``peft_ia3``, or an AdapterHub one
(``ah_seq_bn``, ``ah_double_seq_bn``, ``ah_par_bn``,
``ah_fusion3``, ``ah_init``). A ``+nodrop`` suffix trains adaptune configurations with base dropout off. An ``@bf16``
suffix runs the configuration under the precision policy: the forward under bf16 autocast, and, where a base is
frozen (adapters of any library, LoRA, inference), that base stored in bf16 with the trained tensors in fp32 —
the same treatment for adaptune, ``peft`` and AdapterHub, whose users can do the same. ``full@bf16`` is standard
mixed precision (fp32 weights, autocast).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

__all__ = ["MODELS", "batch", "build", "infer_step", "precision_of", "saved_bytes", "train_step"]

# model name -> (loader kind, default batch, default length)
MODELS = {"minilm": ("classification", 16, 128), "smollm2": ("causal-lm", 4, 128), "tiny": ("classification", 2, 8)}
REDUCTION = 16  # every bottleneck configuration, ours and AdapterHub's, uses reduction factor 16


def _load(model_name: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if model_name == "tiny":  # the benchmark's own smoke test: no weights needed
        cfg = AutoConfig.for_model(
            "bert",
            vocab_size=1000,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=2,
        )
        return AutoModelForSequenceClassification.from_config(cfg)
    from ..training.assets import resolve_model

    path = resolve_model(model_name)
    if MODELS[model_name][0] == "causal-lm":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32)


def _head(model: nn.Module) -> list[str]:
    return ["classifier"] if hasattr(model, "classifier") else []


def _adaptune(model: nn.Module, config: str, bs: int) -> nn.Module:
    import adaptune
    from adaptune import AdapterConfig, PerExample

    base, _, nodrop = config.partition("+")
    heads = _head(model)
    if base in ("fusion3", "mixed8"):
        names = [f"a{i}" for i in range(3 if base == "fusion3" else 8)]
        for name in names:
            adaptune.add_adapter(model, name, AdapterConfig.pfeiffer(init="normal"), activate=False)
        if base == "fusion3":
            fuse = adaptune.add_fusion(model, names)
            adaptune.train_fusion(model, fuse, heads=heads)
        else:
            adaptune.train_adapter(model, names, heads=heads, setup=PerExample([names[i % 8] for i in range(bs)]))
    elif base in ("lora", "lora_merged", "ia3"):
        _other_method(model, base, heads)
    else:
        cfg = {
            "pfeiffer": AdapterConfig.pfeiffer(init="normal"),
            "houlsby": AdapterConfig.houlsby(init="normal"),
            "parallel": AdapterConfig.parallel(init="normal"),
            "pfeiffer_top_half": AdapterConfig.pfeiffer(layers="top-half", init="normal"),
        }[base]
        adaptune.add_adapter(model, "x", cfg)
        adaptune.train_adapter(model, "x", heads=heads)
    if nodrop:
        adaptune.set_base_dropout(model, False, heads=heads)
    return model


def _other_method(model: nn.Module, config: str, heads: list[str]) -> None:
    """adaptune LoRA (r 8, alpha 16 on query and value: peft's configuration below) or (IA)³ (keys, values, FFN
    intermediate); ``lora_merged`` folds the LoRA into the base weights and runs the bare model."""
    import adaptune

    cfg = adaptune.IA3Config() if config == "ia3" else adaptune.LoraConfig(rank=8, alpha=16.0, targets="qv")
    adaptune.add_adapter(model, "x", cfg)
    adaptune.train_adapter(model, "x", heads=heads)
    if config == "lora_merged":
        adaptune.merge_adapter(model, "x")
        adaptune.set_active(model, None)  # the merged weights carry it: no hook runs


def _peft(model: nn.Module, config: str) -> nn.Module:
    from peft import IA3Config, LoraConfig, get_peft_model

    llama = hasattr(model.config, "num_key_value_heads")
    if config == "peft_ia3":  # adaptune's IA3Config(): keys, values and the input of the FFN output projection
        ffn = r".*layers?\.\d+\.(mlp\.down_proj|output\.dense)$"
        kv = r".*\.(k_proj|v_proj|key|value)$"
        method: Any = IA3Config(target_modules=f"{kv}|{ffn}", feedforward_modules=ffn, modules_to_save=_head(model))
    else:
        targets = ["q_proj", "v_proj"] if llama else ["query", "value"]
        method = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, modules_to_save=_head(model))
    peft_model = get_peft_model(model, method)
    return peft_model.merge_and_unload() if config == "peft_lora_merged" else peft_model


def _adapterhub(model: nn.Module, config: str) -> nn.Module:
    import adapters
    from adapters import DoubleSeqBnConfig, ParBnConfig, SeqBnConfig
    from adapters.composition import Fuse

    adapters.init(model)
    kind = config.removeprefix("ah_")
    if kind == "init":
        return model
    if kind == "fusion3":
        names = ["a0", "a1", "a2"]
        for name in names:
            model.add_adapter(name, config=SeqBnConfig(reduction_factor=REDUCTION))
        model.add_adapter_fusion(Fuse(*names))
        model.train_adapter_fusion(Fuse(*names))
    else:
        cls = {"seq_bn": SeqBnConfig, "double_seq_bn": DoubleSeqBnConfig, "par_bn": ParBnConfig}[kind]
        model.add_adapter("x", config=cls(reduction_factor=REDUCTION))
        model.train_adapter("x")
    for name in _head(model):  # train the classifier as every other configuration does
        model.get_submodule(name).requires_grad_(True)
    return model


def precision_of(config: str) -> Any:
    """The ``adaptune.core.precision.Precision`` of a configuration (``@bf16`` suffix), or fp32."""
    from adaptune.core.precision import resolve_precision

    return resolve_precision(config.partition("@")[2] or "fp32", "cpu")


def build(config: str, model_name: str, bs: int) -> nn.Module:
    """The model set up for ``config``, in train mode (callers switch to eval for inference)."""
    config, _, precision = config.partition("@")
    model = _build(config, model_name, bs)
    if precision:
        from adaptune.core.precision import apply_precision, resolve_precision

        # Full fine-tuning keeps fp32 weights; everything else stores what does not train in bf16.
        apply_precision(model, resolve_precision(precision, "cpu"), frozen_base=config != "full")
    return model


def _build(config: str, model_name: str, bs: int) -> nn.Module:
    model = _load(model_name)
    if config in ("full", "base"):
        model.requires_grad_(config == "full")
    elif config.startswith("peft_"):
        model = _peft(model, config)
    elif config.startswith("ah_"):
        model = _adapterhub(model, config)
    else:
        model = _adaptune(model, config, bs)
    return model.train()


def batch(model_name: str, bs: int, length: int, labels: bool = True) -> dict[str, torch.Tensor]:
    """A fixed random batch of token ids (classification labels, or the ids themselves for a causal LM)."""
    g = torch.Generator().manual_seed(0)
    vocab = 1000 if model_name == "tiny" else 29000
    ids = torch.randint(100, vocab, (bs, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones(bs, length, dtype=torch.long)}
    if labels:
        lm = MODELS[model_name][0] == "causal-lm"
        out["labels"] = ids.clone() if lm else torch.randint(0, 2, (bs,), generator=g)
    return out


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, inputs: dict[str, torch.Tensor], precision: Any = None
) -> float:
    """Seconds for forward (under ``precision``'s autocast) + backward + AdamW step."""
    t0 = time.perf_counter()
    with _autocast(precision):
        loss = model(**inputs).loss.float()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _autocast(precision: Any) -> Any:
    import contextlib

    if precision is None:
        return contextlib.nullcontext()
    from adaptune.core.precision import autocast

    return autocast(precision, "cpu")


@torch.no_grad()
def infer_step(model: nn.Module, inputs: dict[str, torch.Tensor], precision: Any = None) -> float:
    """Seconds for one forward pass (eval mode, no grad, under ``precision``'s autocast)."""
    t0 = time.perf_counter()
    with _autocast(precision):
        model(**inputs)
    return time.perf_counter() - t0


def saved_bytes(model: nn.Module, config: str, folder: Any) -> int:
    """Bytes on disk of what a user saves for ``config``: the adapter (+ head), the LoRA, or the whole model."""
    from pathlib import Path

    folder = Path(folder)
    config = config.partition("@")[0]
    if config == "full" or config.startswith("peft_"):
        model.save_pretrained(folder)
    elif config.startswith("ah_"):
        if config == "ah_fusion3":
            model.save_adapter_fusion(folder, "a0,a1,a2")
        else:
            model.save_adapter(folder, "x")
    else:
        import adaptune

        setup = adaptune.active_setup(model)
        if isinstance(setup, adaptune.Fuse):
            adaptune.save_fusion(model, setup, folder, heads=tuple(_head(model)))
        else:
            adaptune.save_adapter(model, adaptune.list_adapters(model)[0], folder, heads=_head(model))
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
