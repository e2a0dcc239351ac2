"""Built-in model assets: the GGUF -> fp32 cache conversion writes a folder that ``from_pretrained`` reads, once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from adaptune.training.assets import MODELS, _converted_gguf

from .cli_fixtures import make_tokenizer, vocabulary


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
