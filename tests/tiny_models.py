"""Tiny, randomly initialised Hugging Face models for the architecture-matrix tests.

Everything is built from configs only (no Hub access): every model has width 32 (or the smallest valid value),
two blocks per stack, FFN size 64 and a vocabulary of 128, with dropout disabled and eager attention, so that forward
passes are cheap and bit-for-bit reproducible on CPU.

Run ``python tests/tiny_models.py`` to smoke-test every type, or ``python tests/tiny_models.py --dump [PATH]`` to
regenerate the architecture notes (``tests/ARCH_NOTES.txt`` by default).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoConfig, AutoModel
from transformers.cache_utils import Cache
from transformers.pytorch_utils import Conv1D
from transformers.utils import ModelOutput

MODEL_TYPES: tuple[str, ...] = (
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta-v2",
    "modernbert",
    "mpnet",
    "squeezebert",
    "gpt2",
    "gpt_neox",
    "gptj",
    "opt",
    "bloom",
    "falcon",
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "olmo",
    "starcoder2",
    "codegen",
    "t5",
    "bart",
    "mbart",
    "whisper",
    "vit",
    "clip",
    "wav2vec2",
)

HIDDEN = 32
LAYERS = 2
HEADS = 4
KV_HEADS = 2  # GQA where supported, so k/v projections have a different out_features than q
HEAD_DIM = HIDDEN // HEADS
FFN = 64
VOCAB = 128
MAX_POS = 64
SEQ_LEN = 8
DEC_SEQ_LEN = 6  # differs from SEQ_LEN so encoder/decoder shape mix-ups fail loudly
N_PAD = 3  # trailing padding positions in the second row of every attention_mask
SLIDING_WINDOW = 4  # smaller than SEQ_LEN so sliding-window masks actually take effect
IMAGE_SIZE = 16
PATCH_SIZE = 4
MEL_BINS = 8
AUDIO_FRAMES = 8  # whisper encoder positions; input_features must have exactly 2x this length (conv stride 2)
AUDIO_SAMPLES = 40  # wav2vec2: two kernel-3 stride-2 convs turn 40 samples into 9 frames

# Special ids inside the tiny vocab (the stock ids, e.g. 50256, would be out of range).
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_REGULAR_ID = 3

_TOKEN_IDS: dict[str, int] = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}

_BERT_LIKE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": FFN,
    "max_position_embeddings": MAX_POS,
    **_TOKEN_IDS,
}

_LLAMA_LIKE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "intermediate_size": FFN,
    "max_position_embeddings": MAX_POS,
    **_TOKEN_IDS,
}

_GPT2_LIKE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "n_embd": HIDDEN,
    "n_layer": LAYERS,
    "n_head": HEADS,
    "n_inner": FFN,
    "n_positions": MAX_POS,
    **_TOKEN_IDS,
}

_BART_LIKE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "d_model": HIDDEN,
    "encoder_layers": LAYERS,
    "decoder_layers": LAYERS,
    "encoder_attention_heads": HEADS,
    "decoder_attention_heads": HEADS,
    "encoder_ffn_dim": FFN,
    "decoder_ffn_dim": FFN,
    **_TOKEN_IDS,
    "decoder_start_token_id": EOS_ID,
    "forced_eos_token_id": EOS_ID,
}

_VISION: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": FFN,
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "num_channels": 3,
}

_CONFIG_KWARGS: dict[str, dict[str, Any]] = {
    "bert": _BERT_LIKE,
    # roberta-style position ids start at pad_token_id + 1, hence MAX_POS (not SEQ_LEN) positions.
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "distilbert": {
        "vocab_size": VOCAB,
        "dim": HIDDEN,
        "n_layers": LAYERS,
        "n_heads": HEADS,
        "hidden_dim": FFN,
        "max_position_embeddings": MAX_POS,
        "pad_token_id": PAD_ID,
    },
    # albert: factorised embeddings (16 -> 32) and one shared layer (num_hidden_groups=1) applied twice.
    "albert": {**_BERT_LIKE, "embedding_size": 16, "num_hidden_groups": 1, "inner_group_num": 1},
    # electra: embedding_size != hidden_size adds the embeddings_project Linear.
    "electra": {**_BERT_LIKE, "embedding_size": 16},
    # deberta-v2 with the deberta-v3 style disentangled attention, so the relative-position paths are exercised.
    "deberta-v2": {
        **_BERT_LIKE,
        "type_vocab_size": 0,
        "relative_attention": True,
        "position_buckets": 16,
        "max_relative_positions": -1,
        "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
        "pooler_hidden_size": HIDDEN,
    },
    "modernbert": {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": MAX_POS,
        "local_attention": SLIDING_WINDOW,
        "global_attn_every_n_layers": 2,  # layer 0 global, layer 1 local
        **_TOKEN_IDS,
        "cls_token_id": BOS_ID,
        "sep_token_id": EOS_ID,
    },
    # mpnet: keep relative_attention_num_buckets=32, compute_position_bias hard-codes 32 (IndexError otherwise).
    "mpnet": _BERT_LIKE,
    # squeezebert: every projection is a 1x1 nn.Conv1d on (B, C, T) tensors; the stock groups (4 for q/k/v, the
    # FFN and the output, 1 for post_attention) are kept. embedding_size must equal hidden_size.
    "squeezebert": {**_BERT_LIKE, "embedding_size": HIDDEN},
    "gpt2": _GPT2_LIKE,
    "gpt_neox": {**_BERT_LIKE, "rotary_pct": 0.5},
    "gptj": {**_GPT2_LIKE, "rotary_dim": HEAD_DIM // 2},
    "opt": {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "word_embed_proj_dim": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "ffn_dim": FFN,
        "max_position_embeddings": MAX_POS,
        **_TOKEN_IDS,
    },
    "bloom": {"vocab_size": VOCAB, "hidden_size": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, **_TOKEN_IDS},
    # falcon: stock falcon-7b layout (multi-query attention, parallel attn/MLP, fused query_key_value).
    "falcon": {
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "ffn_hidden_size": FFN,
        "max_position_embeddings": MAX_POS,
        **_TOKEN_IDS,
    },
    "llama": _LLAMA_LIKE,
    "mistral": {**_LLAMA_LIKE, "head_dim": HEAD_DIM, "sliding_window": SLIDING_WINDOW},
    "mixtral": {**_LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2": _LLAMA_LIKE,
    "qwen2_moe": {
        **_LLAMA_LIKE,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": FFN,
        "shared_expert_intermediate_size": FFN,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    },
    "qwen3": {**_LLAMA_LIKE, "head_dim": HEAD_DIM},
    "gemma": {**_LLAMA_LIKE, "head_dim": HEAD_DIM},
    "gemma2": {
        **_LLAMA_LIKE,
        "head_dim": HEAD_DIM,
        "query_pre_attn_scalar": HEAD_DIM,
        "sliding_window": SLIDING_WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
    },
    "gemma3_text": {
        **_LLAMA_LIKE,
        "head_dim": HEAD_DIM,
        "query_pre_attn_scalar": HEAD_DIM,
        "sliding_window": SLIDING_WINDOW,
        "layer_types": ["sliding_attention", "full_attention"],
    },
    # phi: partial rotary (half of head_dim) and a separate `dense` output projection.
    "phi": {**_LLAMA_LIKE, "partial_rotary_factor": 0.5},
    # phi3: fused qkv_proj and gate_up_proj.
    "phi3": {**_LLAMA_LIKE, "original_max_position_embeddings": MAX_POS},
    "olmo": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
    # codegen splits qkv into 4 model-parallel shards, so n_head must be divisible by 4.
    "codegen": {**_GPT2_LIKE, "n_ctx": MAX_POS, "rotary_dim": HEAD_DIM // 2},
    "t5": {
        "vocab_size": VOCAB,
        "d_model": HIDDEN,
        "d_kv": HEAD_DIM,
        "d_ff": FFN,
        "num_layers": LAYERS,
        "num_decoder_layers": LAYERS,
        "num_heads": HEADS,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "decoder_start_token_id": PAD_ID,
    },
    "bart": {**_BART_LIKE, "max_position_embeddings": MAX_POS},
    "mbart": {**_BART_LIKE, "max_position_embeddings": MAX_POS},
    "whisper": {
        **_BART_LIKE,
        "num_mel_bins": MEL_BINS,
        "max_source_positions": AUDIO_FRAMES,
        "max_target_positions": MAX_POS,
        "begin_suppress_tokens": None,
        "suppress_tokens": None,
    },
    "vit": {**_VISION, "encoder_stride": PATCH_SIZE},
    "clip": {
        "projection_dim": 16,  # != HIDDEN so the projection Linears are visibly non-square
        "text_config": {
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": FFN,
            "max_position_embeddings": MAX_POS,
            "projection_dim": 16,
            **_TOKEN_IDS,
        },
        "vision_config": {**_VISION, "projection_dim": 16},
    },
    "wav2vec2": {
        "vocab_size": 32,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "conv_dim": (16, 16),
        "conv_kernel": (3, 3),
        "conv_stride": (2, 2),
        "num_conv_pos_embeddings": 4,
        "num_conv_pos_embedding_groups": 2,
        # No SpecAugment: masking draws random numbers in train mode and would break train/eval comparisons.
        "mask_time_prob": 0.0,
        "mask_feature_prob": 0.0,
        "apply_spec_augment": False,
        **_TOKEN_IDS,
    },
}

_ENC_DEC = frozenset({"t5", "bart", "mbart", "whisper"})
_NO_ATTENTION_MASK = frozenset({"vit", "whisper"})  # whisper's encoder ignores attention_mask


def _iter_configs(config: transformers.PretrainedConfig) -> Iterator[transformers.PretrainedConfig]:
    """Yield ``config`` and, recursively, its sub-configs (e.g. clip text/vision)."""
    yield config
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if isinstance(sub, transformers.PretrainedConfig):
            yield from _iter_configs(sub)


def _zero_dropout(config: transformers.PretrainedConfig) -> None:
    """Set every float dropout / layerdrop probability (incl. sub-configs) to 0.0."""
    for cfg in _iter_configs(config):
        for name, value in list(vars(cfg).items()):
            if isinstance(value, float) and "drop" in name.lower():  # *dropout*, *pdrop, layerdrop
                setattr(cfg, name, 0.0)


def tiny_config(model_type: str) -> transformers.PretrainedConfig:
    """Return the tiny, dropout-free, eager-attention config for ``model_type``."""
    if model_type not in _CONFIG_KWARGS:
        raise KeyError(f"unknown model_type {model_type!r}; expected one of {MODEL_TYPES}")
    config = AutoConfig.for_model(model_type, **_CONFIG_KWARGS[model_type])
    _zero_dropout(config)
    # The setters propagate to sub-configs. Eager kernels keep outputs deterministic; eager experts avoid grouped_mm.
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    return config


def build_model(model_type: str, seed: int = 0) -> nn.Module:
    """Build the fp32 base model (``AutoModel``) for ``model_type`` from its tiny config, seeded, in eval mode."""
    config = tiny_config(model_type)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config, attn_implementation="eager", dtype=torch.float32)
    return model.float().eval()


def _token_ids(gen: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """Random non-special token ids."""
    return torch.randint(FIRST_REGULAR_ID, VOCAB, (batch, length), generator=gen)


def _padding_mask(batch: int, length: int, n_pad: int) -> torch.Tensor:
    """All-ones mask except the last ``n_pad`` positions of row 1 (right padding, so no query row is fully masked)."""
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[1, length - n_pad :] = 0
    return mask


def make_inputs(model_type: str, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic ``model(**inputs)`` kwargs for the base model of ``model_type``."""
    if model_type not in _CONFIG_KWARGS:
        raise KeyError(f"unknown model_type {model_type!r}")
    # A private generator leaves the global RNG (used for weight init) untouched.
    gen = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}

    if model_type == "vit":
        inputs["pixel_values"] = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
        return inputs
    if model_type == "wav2vec2":
        inputs["input_values"] = torch.randn(batch, AUDIO_SAMPLES, generator=gen)
        mask = _padding_mask(batch, AUDIO_SAMPLES, AUDIO_SAMPLES // 4)
        inputs["input_values"] = inputs["input_values"] * mask  # padded samples are zeros, as a processor would do
        inputs["attention_mask"] = mask
        return inputs
    if model_type == "whisper":
        inputs["input_features"] = torch.randn(batch, MEL_BINS, 2 * AUDIO_FRAMES, generator=gen)
        inputs["decoder_input_ids"] = _token_ids(gen, batch, DEC_SEQ_LEN)
        return inputs

    input_ids = _token_ids(gen, batch, SEQ_LEN)
    mask = _padding_mask(batch, SEQ_LEN, N_PAD)
    inputs["input_ids"] = input_ids.masked_fill(mask == 0, PAD_ID)
    if model_type not in _NO_ATTENTION_MASK:
        inputs["attention_mask"] = mask
    if model_type in _ENC_DEC:
        inputs["decoder_input_ids"] = _token_ids(gen, batch, DEC_SEQ_LEN)
    if model_type == "clip":
        inputs["pixel_values"] = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    return inputs


def _collect(obj: Any, out: list[torch.Tensor]) -> None:
    """Depth-first collection of floating-point tensors from ``obj``."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            out.append(obj)
    elif isinstance(obj, ModelOutput):
        for value in obj.values():  # field order of the dataclass; None fields are absent
            _collect(value, out)
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            _collect(obj[key], out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _collect(value, out)
    elif isinstance(obj, Cache):
        if hasattr(obj, "self_attention_cache"):  # EncoderDecoderCache
            _collect(obj.self_attention_cache, out)
            _collect(obj.cross_attention_cache, out)
        else:
            for layer in obj.layers:
                _collect([vars(layer)[name] for name in sorted(vars(layer))], out)


def output_tensors(outputs: Any) -> list[torch.Tensor]:
    """All floating-point tensors in a model output (ModelOutput / tuple / dict / KV cache), in a stable order."""
    tensors: list[torch.Tensor] = []
    _collect(outputs, tensors)
    return tensors


# --------------------------------------------------------------------------------------------------------------------
# Smoke test and architecture dump.


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Outermost ModuleLists whose children contain Linear/Conv1D layers, i.e. the transformer block stacks."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or any(name.startswith(prev + ".") for prev, _ in found):
            continue
        if any(isinstance(m, (nn.Linear, Conv1D)) for m in module.modules()):
            found.append((name, module))
    return found


def _describe_block(block: nn.Module) -> list[str]:
    """One line per Linear/Conv1D, plus raw (non-Linear) parameters with ndim >= 2 such as fused experts."""
    lines: list[str] = []
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear):
            lines.append(f"    {name} Linear {module.in_features}->{module.out_features}")
        elif isinstance(module, Conv1D):
            lines.append(f"    {name} Conv1D {module.nx}->{module.nf}")
        elif not isinstance(module, nn.Embedding):
            for pname, param in module.named_parameters(recurse=False):
                if param.ndim >= 2:
                    kind = "PARAM3D" if param.ndim >= 3 else "param2d"
                    prefix = f"{name}." if name else ""
                    lines.append(f"    {prefix}{pname} {kind} {tuple(param.shape)} [{type(module).__name__}]")
    return lines


def _outside_blocks(model: nn.Module, block_names: list[str]) -> list[str]:
    """Linear / Conv1D / conv layers that live outside the block stacks (embedding projections, poolers, heads)."""
    items: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in block_names):
            continue
        if isinstance(module, nn.Linear):
            items.append(f"{name} {module.in_features}->{module.out_features}")
        elif isinstance(module, Conv1D):
            items.append(f"{name} Conv1D {module.nx}->{module.nf}")
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            kind = type(module).__name__.removeprefix("Parametrized")
            # wav2vec2's positional conv is weight-normed: its .weight is computed from parametrization originals.
            wn = " weight_norm" if parametrize.is_parametrized(module) else ""
            items.append(f"{name} {kind}{tuple(module.weight.shape)}{wn}")
    return items


def dump_arch_notes(path: Path) -> None:
    """Write the compact per-model block/linear-layer inventory to ``path``."""
    lines = [
        "ARCH_NOTES: tiny configs from tests/tiny_models.py (hidden 32, heads 4, kv heads 2 where GQA, ffn 64).",
        "Per model: outermost block ModuleList(s) [len x class] and, for block 0 of each, every Linear / Conv1D as",
        "in->out, plus raw parameters with ndim>=2 not owned by a Linear/Conv1D (PARAM3D = fused MoE experts).",
        "'outside:' lists Linear/Conv1D/conv layers outside the block stacks. Paths are relative to the AutoModel.",
        "Regenerate: .venv/bin/python tests/tiny_models.py --dump",
        "",
    ]
    for model_type in MODEL_TYPES:
        model = build_model(model_type)
        lines.append(f"== {model_type} ({type(model).__name__})")
        stacks = _block_lists(model)
        for list_name, blocks in stacks:
            lines.append(f"  {list_name} [{len(blocks)} x {type(blocks[0]).__name__}]")
            lines.extend(_describe_block(blocks[0]))
        config = model.config
        if getattr(config, "num_hidden_groups", None) is not None:  # albert
            lines.append(
                f"  ! shared weights: {config.num_hidden_groups} group x {config.inner_group_num} layer run "
                f"{config.num_hidden_layers} times (group index = layer * groups // num_hidden_layers)"
            )
        outside = _outside_blocks(model, [name for name, _ in stacks])
        lines.append("  outside: " + (", ".join(outside) if outside else "-"))
    path.write_text("\n".join(lines) + "\n")


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    """Bit-identical parameters and buffers (names, shapes, values)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _smoke(model_type: str) -> tuple[str, int, float]:
    """Build twice, forward twice, backward once; return (class name, param count, forward seconds)."""
    model = build_model(model_type, seed=0)
    if not _same_state(model, build_model(model_type, seed=0)):
        raise AssertionError("weights differ between two builds with the same seed")
    inputs = make_inputs(model_type)
    if any(not torch.equal(v, make_inputs(model_type)[k]) for k, v in inputs.items()):
        raise AssertionError("make_inputs is not deterministic")
    start = time.perf_counter()
    with torch.no_grad():
        first = output_tensors(model(**inputs))
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        second = output_tensors(model(**inputs))
    if (
        not first
        or len(first) != len(second)
        or not all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    ):
        raise AssertionError("two forward passes differ")
    if not all(torch.isfinite(t).all() for t in first):
        raise AssertionError("non-finite outputs")
    loss = sum(t.pow(2).sum() for t in output_tensors(model(**inputs)))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads or not all(torch.isfinite(g).all() for g in grads):
        raise AssertionError("missing or non-finite gradients")
    return type(model).__name__, sum(p.numel() for p in model.parameters()), elapsed


def main(argv: list[str]) -> int:
    """Smoke-test all model types (default) or dump ARCH_NOTES (``--dump [PATH]``)."""
    transformers.logging.set_verbosity_error()
    if argv[:1] == ["--dump"]:
        target = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("ARCH_NOTES.txt")
        dump_arch_notes(target)
        print(f"wrote {target}")
        return 0
    failures = 0
    total = time.perf_counter()
    for model_type in MODEL_TYPES:
        try:
            cls_name, n_params, elapsed = _smoke(model_type)
            print(f"{model_type:<12} {cls_name:<22} {n_params:>8,d} params  fwd {elapsed * 1e3:6.1f} ms  OK")
        except Exception as exc:  # report every model rather than stopping at the first failure
            failures += 1
            print(f"{model_type:<12} FAILED {type(exc).__name__}: {exc}")
    print(f"{len(MODEL_TYPES) - failures}/{len(MODEL_TYPES)} OK in {time.perf_counter() - total:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
