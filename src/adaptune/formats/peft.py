"""peft folders: load peft LoRA / (IA)³ adapters into adaptune, and export adaptune's to a folder peft loads.

Prompt-learning folders (``PROMPT_TUNING``, ``PREFIX_TUNING``) are read by ``formats.peft_prompt``; ``load_peft``
dispatches on ``peft_type``.

A peft folder holds ``adapter_config.json`` (with ``peft_type``) and ``adapter_model.safetensors`` (or the
pickle ``adapter_model.bin``, read with ``torch.load(weights_only=True)``: tensors only, never code). Keys are
``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (LoRA; shapes (r, in) / (out, r), as adaptune's
``A`` / ``B``) and ``base_model.model.<module>.ia3_l`` ((IA)³; (out, 1) scales the module's output, (1, in) its
input, a peft "feedforward" module). Loading names the modules exactly (``target_modules``), so the adapter
sits where peft put it; the numbers are peft's: ``W x + (alpha/r)·B A x`` and ``l ⊙ (W x + b)`` / ``W (l ⊙ x)``.

A config key adaptune cannot honour (DoRA, per-module ranks, trained biases, extra trained modules ...) is refused
with an error naming it; keys that only describe how peft initialised or where the base came from are ignored.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.config import MethodConfig
from ..core.model import adapter_config, adapter_modules, add_adapter, delete_adapter, set_active
from ..core.placement import is_channels_first
from ..methods.ia3 import IA3Config
from ..methods.lora import LoraConfig
from ..util import atomic_dir_write, read_json_object
from .names import PEFT_CONFIG, PEFT_WEIGHTS, PEFT_WEIGHTS_BIN
from .peft_prompt import PROMPT_TYPES, load_peft_prompt, save_peft_prompt
from .tensors import copy_checked_tensor, read_tensors

__all__ = ["is_peft_folder", "load_peft", "save_peft"]

_PREFIX = "base_model.model."
_SUFFIXES = {"lora": (".lora_A.weight", ".lora_B.weight"), "ia3": (".ia3_l",)}
_TYPES = {"LORA": "lora", "IA3": "ia3"}
# Keys read below, and keys that only say how peft initialised the adapter or where the base came from.
_READ = {"peft_type", "r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules", "feedforward_modules"}
_IGNORED = {
    "auto_mapping", "base_model_name_or_path", "revision", "inference_mode", "init_lora_weights",
    "init_ia3_weights", "peft_version", "task_type", "exclude_modules", "layers_pattern", "layers_to_transform",
    "fan_in_fan_out", "megatron_core", "qalora_group_size", "loftq_config", "ensure_weight_tying",
}  # fmt: skip


def is_peft_folder(folder: str | os.PathLike[str]) -> bool:
    """True for a folder written by peft's ``save_pretrained`` (its config names a ``peft_type``)."""
    cfg = Path(folder) / PEFT_CONFIG
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else None
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and "peft_type" in meta


def _check_keys(cfg: dict[str, Any], source: Path) -> str:
    """The adaptune method of a peft config; refuses any setting adaptune would not reproduce, naming the key."""
    method = _TYPES.get(cfg.get("peft_type"))  # type: ignore[arg-type]
    if method is None:
        supported = ", ".join(["LORA", "IA3", *PROMPT_TYPES])
        raise ValueError(f"{source}: peft_type={cfg.get('peft_type')!r} is not supported (supported: {supported})")
    for key, value in cfg.items():
        if key not in _READ and key not in _IGNORED and value not in (None, False, "none", {}, [], ""):
            raise ValueError(f"{source}: peft setting {key}={value!r} is not supported by adaptune")
    return method


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    safe, pickled = folder / PEFT_WEIGHTS, folder / PEFT_WEIGHTS_BIN
    if safe.is_file() or not pickled.is_file():
        return read_tensors(safe), safe
    try:  # weights_only: tensors and plain containers only, never code
        state = torch.load(pickled, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure means "not a weights file" to the user
        raise ValueError(f"{pickled}: not a readable weights-only state dict ({err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{pickled}: expected a dict of tensors")
    return state, pickled


def _module_path(model: nn.Module, saved: str, source: Path) -> str:
    """The model's name for a module peft saved as ``saved``: the same path, or the path without / with the base
    model prefix (peft on ``BertModel`` vs ``BertForSequenceClassification``)."""
    names = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "")
    for candidate in (saved, saved.removeprefix(f"{prefix}."), f"{prefix}.{saved}"):
        if candidate in names:
            return candidate
    raise ValueError(f"{source}: module {saved!r} of the adapter is not in {type(model).__name__}")


def _grouped(state: dict[str, torch.Tensor], method: str, source: Path) -> dict[str, dict[str, torch.Tensor]]:
    """saved module path -> {suffix: tensor}; any other key (a trained head, a bias) is refused, named."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        suffix = next((s for s in _SUFFIXES[method] if key.endswith(s)), None)
        if suffix is None or not key.startswith(_PREFIX):
            raise ValueError(f"{source}: tensor {key!r} is not a {method} weight adaptune reads")
        out.setdefault(key[len(_PREFIX) : -len(suffix)], {})[suffix] = value
    if not out:
        raise ValueError(f"{source}: holds no {method} weights")
    return out


def _config(method: str, cfg: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]]) -> MethodConfig:
    modules = tuple(weights)
    if method == "ia3":  # (1, in) scales the input (peft's feedforward modules), (out, 1) the output
        feedforward = tuple(m for m, t in weights.items() if t[".ia3_l"].shape[0] == 1 < t[".ia3_l"].numel())
        return IA3Config(target_modules=modules, feedforward_modules=feedforward)
    rank = int(cfg.get("r", 8))
    alpha = float(cfg.get("lora_alpha", 8))
    if cfg.get("use_rslora"):  # rsLoRA scales by alpha / sqrt(r): the same as alpha·sqrt(r) / r
        alpha *= math.sqrt(rank)
    return LoraConfig(rank=rank, alpha=alpha, dropout=float(cfg.get("lora_dropout", 0.0)), target_modules=modules)


def load_peft(
    model: nn.Module,
    folder: str | os.PathLike[str],
    name: str | None = None,
    *,
    activate: bool = True,
    load_head: bool = True,
) -> str:
    """Load a peft LoRA, (IA)³, prompt-tuning or prefix-tuning folder into ``model`` as an adaptune adapter; returns
    its name.

    Args:
        model: the base the adapter was trained on (``XModel`` or a task class around it).
        folder: a peft ``save_pretrained`` folder.
        name: the adapter's name (default: the folder's name made into an identifier).
        activate: make it the only active adapter.
        load_head: also copy a task head peft saved with the adapter (prompt learning's ``modules_to_save``).

    Raises:
        FileNotFoundError: a file is missing. ValueError: an unsupported ``peft_type`` or setting (named), a
        module the model lacks, or tensors of the wrong shape.
    """
    src = Path(folder)
    cfg_path = src / PEFT_CONFIG
    cfg = read_json_object(cfg_path)
    name = name or ("".join(c if c.isalnum() else "_" for c in src.name).lstrip("0123456789") or "peft")
    if cfg.get("peft_type") in PROMPT_TYPES:
        state, weights_path = _read_weights(src)
        paths = (cfg_path, weights_path)
        return load_peft_prompt(model, cfg, state, name, paths=paths, activate=activate, load_head=load_head)
    method = _check_keys(cfg, cfg_path)
    state, weights_path = _read_weights(src)
    saved = _grouped(state, method, weights_path)
    weights = {_module_path(model, path, weights_path): tensors for path, tensors in saved.items()}
    add_adapter(model, name, _config(method, cfg, weights), activate=False)
    try:
        with torch.no_grad():
            for path, module in adapter_modules(model, name).items():
                tensors = weights[path[: -len(f".adapters.{name}")]]
                if method == "lora":
                    copy_checked_tensor(module.A, tensors[".lora_A.weight"], f"{path}.lora_A.weight", weights_path)
                    copy_checked_tensor(module.B, tensors[".lora_B.weight"], f"{path}.lora_B.weight", weights_path)
                else:
                    vec = tensors[".ia3_l"].flatten()
                    copy_checked_tensor(module.vector, vec, f"{path}.ia3_l", weights_path)
    except Exception:
        delete_adapter(model, name)  # never leave a half-loaded adapter behind
        raise
    if activate:
        set_active(model, [name])
    return name


def save_peft(model: nn.Module, name: str, out_dir: str | os.PathLike[str]) -> Path:
    """Write adapter ``name`` (LoRA or (IA)³; prompt and prefix tuning via ``save_peft_prompt``) as a peft folder:
    ``PeftModel.from_pretrained(base, out_dir)`` then computes the same outputs. The folder names every adapted
    module exactly.

    Raises:
        ValueError: another method, or a host peft would build differently (1x1 ``nn.Conv1d``).
    """
    config = adapter_config(model, name)
    if config.method in ("prompt", "prefix"):
        return save_peft_prompt(model, name, out_dir)
    if not isinstance(config, (LoraConfig, IA3Config)):
        raise ValueError(
            f"adapter {name!r} is a {config.method} adapter; peft folders hold LoRA or (IA)³, prompt or prefix tuning"
        )
    tensors: dict[str, torch.Tensor] = {}
    hosts: list[str] = []
    feedforward: list[str] = []
    for path, module in adapter_modules(model, name).items():
        host = path[: -len(f".adapters.{name}")]
        if is_channels_first(model.get_submodule(host)):
            raise ValueError(
                f"{host}: a 1x1 nn.Conv1d host; peft's layers for it differ from adaptune's, not exported"
            )
        hosts.append(host)
        if isinstance(config, LoraConfig):
            tensors[f"{_PREFIX}{host}.lora_A.weight"] = module.A.detach().float().contiguous().cpu()
            tensors[f"{_PREFIX}{host}.lora_B.weight"] = module.B.detach().float().contiguous().cpu()
        else:
            vec = module.vector.detach().float().cpu()
            tensors[f"{_PREFIX}{host}.ia3_l"] = vec[None, :] if module.mode == "input" else vec[:, None]
            feedforward += [host] if module.mode == "input" else []
    conv1d = any(type(model.get_submodule(h)).__name__ == "Conv1D" for h in hosts)
    meta: dict[str, Any] = {
        "peft_type": "LORA" if isinstance(config, LoraConfig) else "IA3",
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "task_type": None,
        "inference_mode": True,
        "target_modules": hosts,
        "fan_in_fan_out": conv1d,  # GPT-2's Conv1D stores (in, out); peft wants to be told
    }
    if isinstance(config, LoraConfig):
        meta |= {"r": config.rank, "lora_alpha": config.alpha, "lora_dropout": config.dropout, "bias": "none"}
    else:
        meta["feedforward_modules"] = feedforward
    files = {
        PEFT_WEIGHTS: lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
        PEFT_CONFIG: lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"),
    }
    return atomic_dir_write(Path(out_dir), files)
