"""Saved tiny adapters for the server tests: classification adapters with their own heads and label sets (as
`adaptune train` writes them: adapter + head + task.json), built locally from a tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import adaptune
from adaptune import AdapterConfig

from .cli_fixtures import make_model_dir

# name -> label set; different sizes, so per-row heads of different widths meet in one batch
LABELS = {
    "sent": ["neg", "pos"],
    "topic": ["world", "sport", "tech"],
    "sarc": ["plain", "sarcastic"],
    "emo": ["joy", "anger", "fear", "sad"],
}


def _randomize(model: nn.Module, seed: int) -> None:
    """Adapter and head weights away from their identity / zero init, so that every adapter differs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name or name.startswith(("classifier", "bert.pooler")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def load_classifier(model_dir: Path, labels: list[str]) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), dtype=torch.float32
    ).eval()


def make_adapters(root: Path) -> tuple[Path, dict[str, Path]]:
    """A tiny BERT folder and one saved classification adapter per entry of ``LABELS`` under ``root``."""
    model_dir = make_model_dir(root, "bert", dropout=False)
    out: dict[str, Path] = {}
    for seed, (name, labels) in enumerate(LABELS.items()):
        model = load_classifier(model_dir, labels)
        config = AdapterConfig.houlsby() if seed % 2 else AdapterConfig.pfeiffer()
        adaptune.add_adapter(model, name, config)
        _randomize(model, seed + 1)
        folder = root / "adapters" / name
        adaptune.save_adapter(model, name, folder, heads=("classifier", "bert.pooler"))
        info = {"task": "classification", "labels": labels, "model": str(model_dir), "max_length": 64}
        (folder / "task.json").write_text(json.dumps(info), encoding="utf-8")
        out[name] = folder
    return model_dir, out


def reference_probs(model_dir: Path, folder: Path, labels: list[str], texts: list[str], setup: str | None = None):
    """What a plain fp32 model with that adapter (and its head) loaded gives, one text at a time."""
    from adaptune.core.composition import parse
    from adaptune.formats.detect import load_folder

    from .cli_fixtures import make_tokenizer, vocabulary

    model = load_classifier(model_dir, labels)
    name = load_folder(model, folder, activate=True)
    if setup is not None:
        adaptune.set_active(model, parse(setup))
    tok = make_tokenizer(vocabulary())
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tok([text], return_tensors="pt")
            rows.append(model(**enc).logits[0].float().softmax(-1))
    return name, rows
