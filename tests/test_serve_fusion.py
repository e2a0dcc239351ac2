"""A saved fusion (its adapters, fusion layers and head in one folder) served next to plain adapters: a mixed
batch gives what the fusion gives alone, and loading the same fusion again under another name is refused, naming
the clash."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import torch

import adaptune
from adaptune.serve import ServeOptions, build_server, start_background

from .cli_fixtures import make_tokenizer, vocabulary
from .serve_fixtures import LABELS, load_classifier, make_adapters

TEXTS = ["the film was good", "what a boring plot really", "great fun"]
FUSED_LABELS = ["no", "yes", "maybe"]


def _save_fusion(model_dir: Path, out: Path) -> Path:
    model = load_classifier(model_dir, FUSED_LABELS)
    for i, name in enumerate(("f_one", "f_two")):
        adaptune.add_adapter(model, name, adaptune.AdapterConfig.pfeiffer(), activate=False)
        gen = torch.Generator().manual_seed(20 + i)
        with torch.no_grad():
            for p in adaptune.adapter_modules(model, name).values():
                for t in p.parameters():
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.3)
    fuse = adaptune.add_fusion(model, ["f_one", "f_two"], "both")
    gen = torch.Generator().manual_seed(30)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters.both." in name or name.startswith("classifier"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    folder = adaptune.save_fusion(model, fuse, out / "both")
    info = {"task": "classification", "labels": FUSED_LABELS, "model": str(model_dir), "max_length": 64}
    (folder / "task.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def test_a_fusion_is_served_beside_adapters(tmp_path: Path) -> None:
    model_dir, folders = make_adapters(tmp_path)
    fusion = _save_fusion(model_dir, tmp_path / "adapters")
    server = build_server(
        [(None, folders["sent"]), (None, fusion)],
        ServeOptions(max_wait_ms=100, adapter_root=fusion.parent),
        precision="fp32",
    )
    uv, port = start_background(server)
    url = f"http://127.0.0.1:{port}"
    try:
        names = [a["name"] for a in httpx.get(f"{url}/v1/adapters").json()["adapters"]]
        assert names == ["sent", "both"]
        got = httpx.post(f"{url}/v1/classify", json={"adapter": "both", "texts": TEXTS}, timeout=30).json()
        refused = httpx.post(f"{url}/v1/adapters", json={"name": "again", "path": "both"}, timeout=30)
    finally:
        uv.should_exit = True
        uv.adaptune_thread.join(30)
    reference = load_classifier(model_dir, FUSED_LABELS)
    adaptune.load_fusion(reference, fusion)
    tok = make_tokenizer(vocabulary())
    with torch.no_grad():
        expected = [reference(**tok([t], return_tensors="pt")).logits[0].softmax(-1) for t in TEXTS]
    probs = torch.tensor([list(r["probabilities"].values()) for r in got["results"]])
    torch.testing.assert_close(probs, torch.stack(expected), atol=1e-5, rtol=0)
    assert list(got["results"][0]["probabilities"]) == FUSED_LABELS
    assert refused.status_code == 400 and "already exists" in refused.json()["error"]["message"]
    assert LABELS["sent"] == ["neg", "pos"]
