"""save_adapter / load_adapter: exact round-trip, exact keys, base checks, bad files, atomic saves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import adaptune
from adaptune import AdapterConfig

from .helpers import logits, randomize, tiny_bert_classifier


def trained(seed: int = 0) -> torch.nn.Module:
    model = tiny_bert_classifier()
    adaptune.add_adapter(model, "sst", AdapterConfig.houlsby(layers="1-3"))
    randomize(model, "sst", seed)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    return model


def test_round_trip_is_exact(tmp_path: Path, ids: torch.Tensor) -> None:
    model = trained()
    out = adaptune.save_adapter(model, "sst", tmp_path / "sst")
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "adapter_config.json", "head.safetensors"]
    keys = set(load_file(out / "adapter.safetensors"))
    assert keys == {
        f"{path}.{k}" for path, m in adaptune.adapter_modules(model, "sst").items() for k in m.state_dict()
    }
    assert set(load_file(out / "head.safetensors")) == {"classifier.weight", "classifier.bias"}
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["adaptune_version"] == adaptune.__version__
    assert meta["base"]["model_type"] == "bert" and meta["base"]["num_layers"] == 4 and meta["base"]["widths"] == [32]

    fresh = tiny_bert_classifier(seed=0)
    with torch.no_grad():
        fresh.classifier.weight.zero_()
    assert adaptune.load_adapter(fresh, out) == "sst"
    assert torch.equal(logits(fresh, ids), logits(model, ids))
    assert adaptune.adapter_config(fresh, "sst") == adaptune.adapter_config(model, "sst")


def test_load_under_another_name_and_without_head(tmp_path: Path, ids: torch.Tensor) -> None:
    model = trained()
    adaptune.save_adapter(model, "sst", tmp_path / "a", heads=None)
    assert not (tmp_path / "a" / "head.safetensors").exists()
    fresh = tiny_bert_classifier()
    fresh.classifier.load_state_dict(model.classifier.state_dict())
    assert adaptune.load_adapter(fresh, tmp_path / "a", name="other") == "other"
    assert torch.equal(logits(fresh, ids), logits(model, ids))


@pytest.mark.parametrize(
    ("other", "needle"),
    [
        (lambda: tiny_bert_classifier(layers=2), "num_layers: saved 4, model has 2"),
        (lambda: tiny_bert_classifier(num_labels=3), "different number of labels"),
    ],
)
def test_incompatible_base_is_refused(tmp_path: Path, other, needle: str) -> None:
    adaptune.save_adapter(trained(), "sst", tmp_path / "a")
    model = other()
    with pytest.raises(ValueError, match=needle):
        adaptune.load_adapter(model, tmp_path / "a")
    assert adaptune.list_adapters(model) == []  # nothing half-loaded


def test_other_model_type_is_refused(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModel

    adaptune.save_adapter(trained(), "sst", tmp_path / "a")
    cfg = AutoConfig.for_model(
        "roberta", hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    with pytest.raises(ValueError, match="model_type: saved 'bert', model has 'roberta'"):
        adaptune.load_adapter(AutoModel.from_config(cfg), tmp_path / "a")


def test_bad_files(tmp_path: Path) -> None:
    folder = adaptune.save_adapter(trained(), "sst", tmp_path / "a")
    model = tiny_bert_classifier()
    with pytest.raises(FileNotFoundError, match="no such adapter folder"):
        adaptune.load_adapter(model, tmp_path / "missing")

    cfg = folder / "adapter_config.json"
    good = cfg.read_text()
    cfg.write_text(good[:40])
    with pytest.raises(ValueError, match=r"adapter_config.json: line \d+ column \d+: invalid JSON"):
        adaptune.load_adapter(model, folder)
    cfg.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="not UTF-8"):
        adaptune.load_adapter(model, folder)
    cfg.write_text(good)

    weights = folder / "adapter.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt safetensors"):
        adaptune.load_adapter(model, folder)
    torch.save({"x": torch.zeros(1)}, weights)  # a pickle under the safetensors name is never unpickled
    with pytest.raises(ValueError, match="corrupt safetensors"):
        adaptune.load_adapter(model, folder)

    tensors = load_file(tmp_path / "a" / "head.safetensors")  # intact file to reuse
    bad = {k: v for k, v in load_file_from(blob).items()}
    first = sorted(bad)[0]
    bad[first] = torch.zeros(1, 1)
    save_file(bad, str(weights))
    with pytest.raises(ValueError, match="has shape"):
        adaptune.load_adapter(model, folder)
    del bad[first]
    save_file(bad, str(weights))
    with pytest.raises(ValueError, match="missing"):
        adaptune.load_adapter(model, folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"adapter\.safetensors: missing"):
        adaptune.load_adapter(model, folder)
    assert adaptune.list_adapters(model) == []
    assert tensors


def load_file_from(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(blob)


def test_unknown_config_key_loads_with_warning(tmp_path: Path, ids: torch.Tensor) -> None:
    model = trained()
    folder = adaptune.save_adapter(model, "sst", tmp_path / "a")
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["config"]["from_the_future"] = True
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    fresh = tiny_bert_classifier()
    with pytest.warns(UserWarning, match="from_the_future"):
        adaptune.load_adapter(fresh, folder)
    assert torch.equal(logits(fresh, ids), logits(model, ids))


def test_file_without_method_loads_as_bottleneck(tmp_path: Path, ids: torch.Tensor) -> None:
    model = trained()
    out = adaptune.save_adapter(model, "sst", tmp_path / "sst")
    cfg = out / "adapter_config.json"
    meta = json.loads(cfg.read_text())
    assert meta["method"] == meta["config"]["method"] == "bottleneck"
    del meta["method"], meta["config"]["method"]  # as written before adapter methods were recorded
    cfg.write_text(json.dumps(meta))
    fresh = tiny_bert_classifier()
    adaptune.load_adapter(fresh, out)
    assert adaptune.adapter_config(fresh, "sst") == adaptune.adapter_config(model, "sst")
    assert torch.equal(logits(fresh, ids), logits(model, ids))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (
            {"method": "nonesuch"},
            r"adapter_config\.json: field 'method' is 'nonesuch', which is not a known adapter method "
            r"\(known: bottleneck",
        ),
        ({"method": 3}, r"field 'method' is 3"),
        ({"method": "nonesuch", "config_method": "bottleneck"}, r"field 'method' is 'nonesuch' but 'config.method'"),
    ],
)
def test_unknown_method_is_refused(tmp_path: Path, edit: dict, needle: str) -> None:
    out = adaptune.save_adapter(trained(), "sst", tmp_path / "sst")
    cfg = out / "adapter_config.json"
    meta = json.loads(cfg.read_text())
    meta["method"] = edit["method"]
    meta["config"]["method"] = edit.get("config_method", edit["method"])
    cfg.write_text(json.dumps(meta))
    model = tiny_bert_classifier()
    with pytest.raises(ValueError, match=needle):
        adaptune.load_adapter(model, out)
    assert adaptune.list_adapters(model) == []


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = trained()
    folder = adaptune.save_adapter(model, "sst", tmp_path / "a")
    (folder / "NOTES.md").write_text("keep me")
    before = (folder / "adapter.safetensors").read_bytes()
    randomize(model, "sst", seed=5)

    import adaptune.formats.native as io

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        adaptune.save_adapter(model, "sst", folder)
    assert (folder / "adapter.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp folder left behind
    monkeypatch.undo()
    adaptune.save_adapter(model, "sst", folder)
    assert (folder / "adapter.safetensors").read_bytes() != before
    assert (folder / "NOTES.md").read_text() == "keep me"


def test_adapter_moves_between_head_classes(tmp_path: Path, ids: torch.Tensor) -> None:
    from transformers import BertModel

    model = trained()
    folder = adaptune.save_adapter(model, "sst", tmp_path / "a")
    bare = BertModel(model.config).eval()
    bare.load_state_dict(tiny_bert_classifier().bert.state_dict())
    with pytest.warns(UserWarning, match="no place for head tensors"):
        adaptune.load_adapter(bare, folder)
    assert adaptune.adapter_targets(bare, "sst") == [
        t.removeprefix("bert.") for t in adaptune.adapter_targets(model, "sst")
    ]
    with torch.no_grad():
        assert torch.equal(bare(input_ids=ids).last_hidden_state, model.bert(input_ids=ids).last_hidden_state)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    folder = adaptune.save_adapter(trained(), "sst", tmp_path / "a")
    tensors = load_file(folder / "adapter.safetensors")
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(folder / "adapter.safetensors"))
    model = tiny_bert_classifier()
    with pytest.raises(ValueError, match="NaN or infinite"):
        adaptune.load_adapter(model, folder)
    assert adaptune.list_adapters(model) == []


def test_new_slots_join_the_active_set(bert: torch.nn.Module) -> None:
    adaptune.add_adapter(bert, "a", AdapterConfig(layers="0-1"))
    adaptune.add_adapter(bert, "b", AdapterConfig(layers="2-3"), activate=False)
    assert adaptune.active_adapters(bert) == ["a"]
    slots = [m for m in bert.modules() if isinstance(m, adaptune.core.slot.AdapterSlot)]
    assert all(s.active == "a" for s in slots)
