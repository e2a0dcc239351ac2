"""peft prompt-learning folders: ``PROMPT_TUNING`` and ``PREFIX_TUNING`` adapters as adaptune prompt / prefix adapters.

peft saves one tensor, ``prompt_embeddings`` (``get_peft_model_state_dict``), plus a sequence classifier's head:

- ``PROMPT_TUNING``: (P, token_dim) soft-prompt embeddings that peft puts before the token embeddings of every call
  (before [CLS] on an encoder, so BERT's pooler reads the first virtual token; ``token_type_ids`` / ``labels`` get 0 /
  -100 there, the attention mask ones). That is adaptune's ``PromptConfig(position="start")``. peft drops explicit
  ``position_ids`` (with a warning) and adaptune shifts them, so both give the model's own positions 0 .. P+T-1 when
  none are passed. peft's FEATURE_EXTRACTION model (a bare encoder) also drops ``token_type_ids``; adaptune keeps
  them, so outputs agree when none (or all zeros) are passed.
- ``PREFIX_TUNING``: (P, num_layers·2·token_dim); layer l's keys are columns block 2l, its values block 2l + 1, each
  viewed (num_attention_heads, token_dim / num_attention_heads): adaptune's ``PrefixTuning.prefix`` layout, with
  peft's ``num_attention_heads`` the model's key/value heads. With ``prefix_projection`` peft saves the prefix its
  MLP computes, never the MLP, so the loaded adapter is always the folded form (``PrefixConfig(reparam=False)``).
- With ``task_type="SEQ_CLS"`` peft trains the head (``modules_to_save``: ``classifier`` / ``score``) and saves it as
  ``base_model.<path>`` (or ``base_model.model.<path>``); it is copied into the model's head, as adaptune's own folders
  do (``load_head``).

``save_peft_prompt`` writes the reverse: a ``position="start"`` prompt or a prefix (folded first when it has the
MLP) with the ``task_type`` of the model's class (``*ForCausalLM``, ``*ForSequenceClassification`` with its head, or
a bare model), so ``PeftModel.from_pretrained`` gives adaptune's outputs.

Refused with the key named: encoder-decoder layouts (``num_transformer_submodules=2``, ``task_type=SEQ_2_SEQ_LM``),
task types whose peft forward adaptune does not reproduce, and sizes that do not fit the model. Keys that only say
how peft initialised the prompt (``prompt_tuning_init``, its text and tokenizer) are ignored: the weights are saved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.config import MethodConfig
from ..core.model import (
    adapter_config,
    adapter_modules,
    adapter_to_fill,
    head_modules,
)
from ..core.placement import model_target
from ..methods.prefix import PrefixConfig
from ..methods.prompt import PromptConfig
from ..util import atomic_dir_write
from .names import PEFT_CONFIG, PEFT_WEIGHTS
from .tensors import copy_checked_tensor, copy_head, module_tensors

__all__ = ["PROMPT_TYPES", "load_peft_prompt", "save_peft_prompt"]

PROMPT_TYPES = {"PROMPT_TUNING": "prompt", "PREFIX_TUNING": "prefix"}
_KEY = "prompt_embeddings"
# task types whose peft forward is "prompt / prefix in front, then the base model's own forward"
_TASKS = (None, "CAUSAL_LM", "SEQ_CLS", "FEATURE_EXTRACTION")
# Keys read below, and keys that only say how peft initialised the prompt or where the base came from.
_READ = {
    "peft_type",
    "task_type",
    "num_virtual_tokens",
    "token_dim",
    "num_layers",
    "num_attention_heads",
    "num_transformer_submodules",
    "modules_to_save",
    "prefix_projection",
    "encoder_hidden_size",
}
_IGNORED = {
    "auto_mapping", "base_model_name_or_path", "revision", "inference_mode", "peft_version", "init_weights",
    "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path", "tokenizer_kwargs",
}  # fmt: skip


def _int(cfg: dict[str, Any], key: str, source: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{source}: peft setting {key}={value!r}, expected an integer >= 1")
    return value


def _check_keys(cfg: dict[str, Any], source: Path) -> None:
    """Refuse any setting adaptune would not reproduce, naming the key and its value."""
    for key, value in cfg.items():
        if key not in _READ and key not in _IGNORED and value not in (None, False, "none", {}, [], ""):
            raise ValueError(f"{source}: peft setting {key}={value!r} is not supported by adaptune")
    if cfg.get("num_transformer_submodules") not in (None, 1):
        raise ValueError(
            f"{source}: peft setting num_transformer_submodules={cfg['num_transformer_submodules']!r} (an "
            "encoder-decoder's prompt for both stacks) is not supported; adaptune reads 1"
        )
    if cfg.get("task_type") not in _TASKS:
        raise ValueError(
            f"{source}: peft setting task_type={cfg['task_type']!r} is not supported for {cfg['peft_type']} "
            f"(supported: {', '.join(str(t) for t in _TASKS)})"
        )


def _config(model: nn.Module, cfg: dict[str, Any], source: Path) -> MethodConfig:
    """The adaptune config of a peft prompt / prefix config, after checking its sizes against ``model``."""
    n, dim = _int(cfg, "num_virtual_tokens", source), _int(cfg, "token_dim", source)
    shape = model_target(model).shape
    assert shape is not None  # model_target always measures the model
    if PROMPT_TYPES[cfg["peft_type"]] == "prompt":
        if dim != shape.hidden:
            raise ValueError(
                f"{source}: peft setting token_dim={dim}, but the model's embeddings are {shape.hidden} wide"
            )
        return PromptConfig(num_virtual_tokens=n, position="start")
    width = shape.kv_heads * shape.head_dim
    expected = {"num_layers": shape.layers, "num_attention_heads": shape.kv_heads, "token_dim": width}
    for key, want in expected.items():
        if _int(cfg, key, source) != want:
            raise ValueError(
                f"{source}: peft setting {key}={cfg[key]} does not fit {type(model).__name__} (expected {want}: "
                f"{shape.layers} layers, {shape.kv_heads} key/value heads of width {shape.head_dim})"
            )
    return PrefixConfig(prefix_length=n, reparam=False)


def _head_tensors(state: dict[str, torch.Tensor], cfg: dict[str, Any], source: Path) -> dict[str, torch.Tensor]:
    """The saved head as model state-dict keys; any tensor that is neither the prompt nor a saved module is refused."""
    heads = set(cfg.get("modules_to_save") or ())
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == _KEY:
            continue
        path = key.removeprefix("base_model.").removeprefix("model.")
        if not key.startswith("base_model.") or path.split(".", 1)[0] not in heads:
            raise ValueError(f"{source}: tensor {key!r} is neither {_KEY!r} nor a module of modules_to_save")
        out[path] = value
    return out


def load_peft_prompt(
    model: nn.Module,
    cfg: dict[str, Any],
    state: dict[str, torch.Tensor],
    name: str,
    *,
    paths: tuple[Path, Path],
    activate: bool = True,
    load_head: bool = True,
) -> str:
    """Load a peft PROMPT_TUNING / PREFIX_TUNING folder's config ``cfg`` and tensors ``state`` as adapter ``name``.

    Args:
        model: the base the adapter was trained on.
        cfg: the folder's ``adapter_config.json``.
        state: the folder's tensors.
        name: the new adapter's name.
        paths: the config file and the weights file (named in errors).
        activate: make it the only active adapter.
        load_head: also copy a saved sequence-classification head into ``model`` (peft's ``modules_to_save``).

    Returns:
        ``name``.

    Raises:
        ValueError: an unsupported setting (named), sizes that do not fit the model, a missing or unexpected tensor.
    """
    cfg_path, weights_path = paths
    _check_keys(cfg, cfg_path)
    config = _config(model, cfg, cfg_path)
    if _KEY not in state:
        raise ValueError(f"{weights_path}: no {_KEY!r} tensor (peft's saved prompt); keys: {sorted(state)[:5]}")
    head = _head_tensors(state, cfg, weights_path)
    with adapter_to_fill(model, name, config, activate=activate):
        with torch.no_grad():
            (path, module), *_ = adapter_modules(model, name).items()
            target = module.prompt if isinstance(config, PromptConfig) else module.prefix
            copy_checked_tensor(target, state[_KEY], f"{_KEY} (for {path})", weights_path)
        if head and load_head:
            copy_head(model, head, weights_path)
    return name


def _task_type(model: nn.Module) -> str:
    """peft's task type for ``model``'s class: only these three run "prompt in front, then the model" in peft."""
    cls = type(model).__name__
    if cls.endswith("ForCausalLM"):
        return "CAUSAL_LM"
    if cls.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if cls.endswith("Model"):
        return "FEATURE_EXTRACTION"
    raise ValueError(f"{cls}: peft's prompt learning for this task class is not reproduced by adaptune; not exported")


def save_peft_prompt(model: nn.Module, name: str, out_dir: str | os.PathLike[str]) -> Path:
    """Write prompt- or prefix-tuning adapter ``name`` as a peft folder; ``PeftModel.from_pretrained(model's base,
    out_dir)`` then computes adaptune's outputs (a reparameterised prefix is saved as the prefix its MLP computes,
    as peft does). A sequence classifier's head goes along, as peft's ``modules_to_save``.

    Raises:
        ValueError: not a prompt / prefix adapter, a prompt at ``position="after_first"`` (peft has only the start),
            or a model class whose peft forward differs (token classification, question answering, seq2seq).
    """
    config = adapter_config(model, name)
    if not isinstance(config, (PromptConfig, PrefixConfig)):
        raise ValueError(f"adapter {name!r} is a {config.method} adapter, not prompt or prefix tuning")
    if isinstance(config, PromptConfig) and config.position != "start":
        raise ValueError(f"adapter {name!r}: position={config.position!r}; peft puts the prompt at the start only")
    task_type = _task_type(model)
    shape = model_target(model).shape
    assert shape is not None  # model_target always measures the model
    module = next(iter(adapter_modules(model, name).values()))
    values = module.prompt if isinstance(config, PromptConfig) else module.prefix_values()  # type: ignore[operator]
    tensors = {_KEY: values.detach().float().contiguous().cpu()}
    heads = head_modules(model) if task_type == "SEQ_CLS" else {}
    tensors |= {f"base_model.{k}": v.float() for k, v in module_tensors(heads).items()}
    prompt = isinstance(config, PromptConfig)
    meta: dict[str, Any] = {
        "peft_type": "PROMPT_TUNING" if prompt else "PREFIX_TUNING",
        "task_type": task_type,
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "inference_mode": True,
        "num_virtual_tokens": config.num_virtual_tokens if prompt else config.prefix_length,
        "num_layers": shape.layers,
        "num_transformer_submodules": 1,
        "modules_to_save": sorted(heads) or None,
    }
    if prompt:  # the prompt is saved; RANDOM only tells peft how to fill it before loading
        meta |= {"token_dim": shape.hidden, "num_attention_heads": None, "prompt_tuning_init": "RANDOM"}
    else:  # peft's prefix layout counts key/value heads (its GQA rule)
        width = shape.kv_heads * shape.head_dim
        meta |= {"token_dim": width, "num_attention_heads": shape.kv_heads, "prefix_projection": False}
    files = {
        PEFT_WEIGHTS: lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
        PEFT_CONFIG: lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"),
    }
    return atomic_dir_write(Path(out_dir), files)
