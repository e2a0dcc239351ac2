"""``adaptune.save_pretrained`` / ``load_pretrained``: base + adapters + fusions + active setup survive a round trip
bit for bit, and the base folder alone loads in plain Transformers without unexpected keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification

import adaptune
from adaptune import AdapterConfig, Fuse, Stack

from .helpers import logits, randomize, tiny_bert_classifier

IDS = torch.randint(0, 100, (3, 9), generator=torch.Generator().manual_seed(7))


def _stacked() -> nn.Module:
    """Tiny BERT classifier with two random adapters (different placements) and Stack(lang, task) active."""
    model = tiny_bert_classifier(seed=3)
    adaptune.add_adapter(model, "lang", AdapterConfig.pfeiffer(reduction_factor=4))
    adaptune.add_adapter(model, "task", AdapterConfig.houlsby(reduction_factor=8))
    randomize(model, "lang", seed=1)
    randomize(model, "task", seed=2)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)  # a trained head lives in the base checkpoint
    adaptune.set_active(model, Stack("lang", "task"))
    return model


def _fused() -> tuple[nn.Module, Fuse]:
    model = tiny_bert_classifier(seed=4)
    for i, name in enumerate(("a", "b")):
        adaptune.add_adapter(model, name, AdapterConfig.pfeiffer(reduction_factor=4))
        randomize(model, name, seed=10 + i)
    fuse = adaptune.add_fusion(model, ["a", "b"])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in adaptune.fusion_modules(model, fuse.name).values():
            for p in layer.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model, fuse


def test_round_trip_with_a_stack_is_bit_for_bit(tmp_path: Path) -> None:
    model = _stacked()
    expected = logits(model, IDS)
    adaptune.set_active(model, None)
    base_only = logits(model, IDS)
    adaptune.set_active(model, Stack("lang", "task"))
    assert not torch.allclose(expected, base_only, atol=1e-3)  # the adapters matter, so the check below does too

    folder = adaptune.save_pretrained(model, tmp_path / "saved")
    restored = adaptune.load_pretrained(folder)
    assert type(restored) is BertForSequenceClassification  # from config.json's "architectures"
    assert adaptune.list_adapters(restored) == adaptune.list_adapters(model)
    assert sorted(adaptune.list_adapters(restored)) == ["lang", "task"]
    assert adaptune.active_setup(restored) == Stack("lang", "task")
    assert restored.dtype == torch.float32
    assert torch.equal(logits(restored, IDS), expected)

    # the base folder is a clean Transformers checkpoint: no adapter tensors, nothing unexpected or missing
    plain, info = BertForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["unexpected_keys"]
    assert not info["missing_keys"]
    assert torch.equal(logits(plain.eval(), IDS), base_only)
    manifest = json.loads((folder / "adaptune" / "manifest.json").read_text())
    assert sorted(manifest["adapters"]) == ["lang", "task"]
    assert manifest["active_setup"] == {"type": "Stack", "children": ["lang", "task"]}


def test_plain_save_pretrained_loses_the_adapters(tmp_path: Path) -> None:
    """The problem this module solves: HF's own save puts adapter tensors into the base checkpoint, and loading
    drops them as unexpected keys."""
    model = _stacked()
    model.save_pretrained(tmp_path / "plain")
    _, info = BertForSequenceClassification.from_pretrained(tmp_path / "plain", output_loading_info=True)
    assert any(".adapters.lang." in k for k in info["unexpected_keys"])


def test_round_trip_with_a_fusion(tmp_path: Path) -> None:
    model, fuse = _fused()
    expected = logits(model, IDS)
    restored = adaptune.load_pretrained(adaptune.save_pretrained(model, tmp_path / "f"), BertForSequenceClassification)
    assert adaptune.list_fusions(restored) == [fuse.name]
    assert adaptune.active_setup(restored) == fuse
    assert torch.equal(logits(restored, IDS), expected)
    assert not restored.training  # from_pretrained's eval mode: the saved fusion runs without dropout


def test_a_fusion_outside_the_active_setup_needs_its_adapters_named(tmp_path: Path) -> None:
    model, fuse = _fused()
    adaptune.set_active(model, "a")
    with pytest.raises(ValueError, match=r"fusions \['fusion_a_b'\] are not in the active setup"):
        adaptune.save_pretrained(model, tmp_path / "f")
    assert not (tmp_path / "f").exists()
    folder = adaptune.save_pretrained(model, tmp_path / "f", fusions=[fuse])
    restored = adaptune.load_pretrained(folder, activate=False)
    assert adaptune.list_fusions(restored) == [fuse.name] and adaptune.active_setup(restored) is None
    adaptune.set_active(restored, fuse)
    adaptune.set_active(model, fuse)
    assert torch.equal(logits(restored, IDS), logits(model, IDS))


def test_resave_keeps_other_files_and_drops_stale_weights(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text("{}")  # saved by the user beside the model: kept
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"old shard")  # from an earlier sharded save
    (folder / "adaptune").mkdir()
    (folder / "adaptune" / "adapters").mkdir()
    (folder / "adaptune" / "adapters" / "gone").mkdir()  # an adapter the model no longer has
    adaptune.save_pretrained(_stacked(), folder)
    names = {p.name for p in folder.iterdir()}
    assert "tokenizer_config.json" in names and "model.safetensors" in names
    assert "model-00002-of-00002.safetensors" not in names
    assert sorted(p.name for p in (folder / "adaptune" / "adapters").iterdir()) == ["lang", "task"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_bad_folders_name_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest.json: missing"):
        adaptune.load_pretrained(tmp_path)
    folder = adaptune.save_pretrained(_stacked(), tmp_path / "saved")
    manifest = folder / "adaptune" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "format": "something/9"}))
    with pytest.raises(ValueError, match=r"manifest.json: field 'format'"):
        adaptune.load_pretrained(folder)
    manifest.write_text(json.dumps({**data, "active_setup": {"type": "Nope"}}))
    with pytest.raises(ValueError, match=r"manifest.json: field 'active_setup'"):
        adaptune.load_pretrained(folder)
    manifest.write_text(json.dumps({**data, "adapters": "lang"}))
    with pytest.raises(ValueError, match=r"manifest.json: field 'adapters'"):
        adaptune.load_pretrained(folder)


def test_state_dict_argument_is_refused(tmp_path: Path) -> None:
    model = _stacked()
    with pytest.raises(ValueError, match="state_dict"):
        adaptune.save_pretrained(model, tmp_path / "x", state_dict=model.state_dict())
