"""Adapters of every method behind one classification server: LoRA, (IA)³ and Compacter rows share forwards with
bottleneck rows; prompt / prefix adapters (which change the sequence every row shares) run in forwards of their own.
A concurrent mix gives what each adapter gives alone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

import adaptune
from adaptune.serve import ServeOptions, build_server, start_background

from .cli_fixtures import make_model_dir, make_tokenizer, vocabulary
from .serve_fixtures import load_classifier

TEXTS = ["the film was good", "what a boring plot really", "great fun"]
LABELS = ["neg", "pos"]
CONFIGS = {
    "bn": lambda: adaptune.AdapterConfig.pfeiffer(),
    "lora": lambda: adaptune.LoraConfig(rank=4),
    "ia3": lambda: adaptune.IA3Config(),
    "prompt": lambda: adaptune.PromptConfig(num_virtual_tokens=3, position="after_first"),
}


def _save(model_dir: Path, name: str, seed: int, out: Path) -> Path:
    model = load_classifier(model_dir, LABELS)
    adaptune.add_adapter(model, name, CONFIGS[name]())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if ".adapters." in pname or pname.startswith(("classifier", "adapters.")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    folder = adaptune.save_adapter(model, name, out / name, heads=("classifier",))
    info = {"task": "classification", "labels": LABELS, "model": str(model_dir), "max_length": 64}
    (folder / "task.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def _alone(model_dir: Path, folder: Path) -> torch.Tensor:
    model = load_classifier(model_dir, LABELS)
    adaptune.load_adapter(model, folder)
    tok = make_tokenizer(vocabulary())
    with torch.no_grad():
        return torch.stack([model(**tok([t], return_tensors="pt")).logits[0].softmax(-1) for t in TEXTS])


def test_every_method_served_in_one_mixed_load(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, "bert", dropout=False)
    folders = {name: _save(model_dir, name, i + 1, tmp_path / "adapters") for i, name in enumerate(CONFIGS)}
    server = build_server([(None, f) for f in folders.values()], ServeOptions(max_wait_ms=150), precision="fp32")
    uv, port = start_background(server)
    try:
        names = list(CONFIGS) * 2
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c, ThreadPoolExecutor(8) as pool:
            out = list(pool.map(lambda n: c.post("/v1/classify", json={"adapter": n, "texts": TEXTS}), names))
    finally:
        uv.should_exit = True
        uv.adaptune_thread.join(30)
    assert server.registry.entries["prompt"].solo and not server.registry.entries["lora"].solo
    for name, resp in zip(names, out, strict=True):
        assert resp.status_code == 200, resp.text
        got = torch.tensor([list(r["probabilities"].values()) for r in resp.json()["results"]])
        torch.testing.assert_close(got, _alone(model_dir, folders[name]), atol=1e-5, rtol=0)


def test_a_generation_server_refuses_prompt_adapters(tmp_path: Path) -> None:
    import pytest
    from transformers import AutoModelForCausalLM

    from adaptune.serve.registry import ServeError

    model_dir = make_model_dir(tmp_path, "llama")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    adaptune.add_adapter(model, "p", adaptune.PromptConfig(num_virtual_tokens=2))
    folder = adaptune.save_adapter(model, "p", tmp_path / "p", heads=())
    info = {"task": "causal-lm", "labels": None, "model": str(model_dir), "max_length": 64}
    (folder / "task.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(ServeError, match="cannot share decode steps"):
        build_server([(None, folder)], ServeOptions(), precision="fp32")
