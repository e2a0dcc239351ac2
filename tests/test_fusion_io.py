"""``load_fusion`` on AdapterHub fusion folders (``save_adapter_fusion``): the fixture outputs made by the real
``adapters`` 1.3.0 are reproduced, through the same reader ``load_adapterhub_setup`` uses; bad folders fail naming
file and field, and leave no fusion behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import adaptune
from adaptune.formats.adapterhub import is_adapterhub_fusion_folder, load_adapterhub_setup

from .adapterhub_cases import ROOT, build_base, load_case


def _model_with_adapters(case_name: str) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    case, inputs, expected = load_case(case_name)
    model = build_base(case, case_name)
    setup = ROOT / case_name / "setup"
    for name in ("a", "b"):
        assert adaptune.load_adapter(model, setup / name, activate=False) == name
    return model, inputs, expected


def _hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _copy_fusion(tmp_path: Path, folder_name: str = "a,b") -> tuple[Path, dict]:
    """The dynamic fixture's fusion folder copied to ``tmp_path/folder_name``, and its config."""
    folder = tmp_path / folder_name
    shutil.copytree(ROOT / "bert_fuse_dynamic" / "setup" / "a,b", folder)
    return folder, json.loads((folder / "adapter_fusion_config.json").read_text())


@pytest.mark.parametrize("case_name", ["bert_fuse_dynamic", "bert_fuse_static"])
def test_load_fusion_reproduces_adapterhub_outputs(case_name: str) -> None:
    model, inputs, expected = _model_with_adapters(case_name)
    folder = ROOT / case_name / "setup" / "a,b"
    assert is_adapterhub_fusion_folder(folder)
    fuse = adaptune.load_fusion(model, folder)
    assert fuse == adaptune.Fuse("a", "b", name="fusion_a_b")
    assert adaptune.active_setup(model) == fuse
    out = _hidden(model, inputs)
    mask = inputs["attention_mask"].bool()
    changed = (expected["last_hidden_state"] - expected["base_last_hidden_state"])[mask].abs().max()
    assert changed > 0.1  # the fusion fixture moves the output: the comparison below proves something
    assert (out - expected["last_hidden_state"])[mask].abs().max() <= 1e-5
    # one reader for both entry points: the setup folder gives the very same numbers
    case, _, _ = load_case(case_name)
    via_setup = build_base(case, case_name)
    load_adapterhub_setup(via_setup, ROOT / case_name / "setup")
    assert torch.equal(_hidden(via_setup, inputs), out)


def test_safetensors_weights_and_names_from_the_config(tmp_path: Path) -> None:
    """``adapter_fusion.safetensors`` is read; without ``adapter_names`` the fused adapters come from ``name``
    ("a,b"), so the folder may have any name."""
    folder, meta = _copy_fusion(tmp_path, "my_fusion")
    weights = folder / "pytorch_model_adapter_fusion.bin"
    save_file(torch.load(weights, weights_only=True), str(folder / "adapter_fusion.safetensors"))
    weights.unlink()
    del meta["adapter_names"]
    (folder / "adapter_fusion_config.json").write_text(json.dumps(meta))
    model, inputs, expected = _model_with_adapters("bert_fuse_dynamic")
    adaptune.load_fusion(model, folder)
    mask = inputs["attention_mask"].bool()
    assert (_hidden(model, inputs) - expected["last_hidden_state"])[mask].abs().max() <= 1e-5


def test_names_from_the_folder_name(tmp_path: Path) -> None:
    folder, meta = _copy_fusion(tmp_path)
    del meta["adapter_names"], meta["name"]
    (folder / "adapter_fusion_config.json").write_text(json.dumps(meta))
    model, _, _ = _model_with_adapters("bert_fuse_dynamic")
    assert adaptune.load_fusion(model, folder, activate=False).children == ("a", "b")
    assert adaptune.list_fusions(model) == ["fusion_a_b"]


def test_fused_adapters_must_be_loaded_first() -> None:
    case, _, _ = load_case("bert_fuse_dynamic")
    model = build_base(case, "bert_fuse_dynamic")
    adaptune.load_adapter(model, ROOT / "bert_fuse_dynamic" / "setup" / "a", activate=False)
    with pytest.raises(ValueError, match=r"\['b'\] are not in the model.*load_adapter.*found beside it"):
        adaptune.load_fusion(model, ROOT / "bert_fuse_dynamic" / "setup" / "a,b")
    assert adaptune.list_fusions(model) == []


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda m: m["config"].update(temperature=True), r"adapter_fusion_config.json: field 'config.temperature'"),
        (lambda m: m["config"].update(query_before_ln=True), r"field 'config.query_before_ln'"),
        (lambda m: m["config"].update(value="yes"), r"field 'config.value' must be true or false"),
        (lambda m: m.update(adapter_names=["a"]), r"adapter_fusion_config.json: field 'adapter_names'"),
        (lambda m: m.pop("config"), r"adapter_fusion_config.json: field 'config' missing"),
        # dynamic weights, but a static config: the value projection has nowhere to go
        (lambda m: m["config"].update(value=False), r"value.weight has no place: the config says value=false"),
    ],
)
def test_bad_config_fields_are_named(tmp_path: Path, edit, error: str) -> None:
    folder, meta = _copy_fusion(tmp_path)
    edit(meta)
    (folder / "adapter_fusion_config.json").write_text(json.dumps(meta))
    model, _, _ = _model_with_adapters("bert_fuse_dynamic")
    with pytest.raises(ValueError, match=error):
        adaptune.load_fusion(model, folder)
    assert adaptune.list_fusions(model) == []
    assert adaptune.list_adapters(model) == ["a", "b"]  # the caller's adapters stay


def test_bad_json_and_missing_weights(tmp_path: Path) -> None:
    folder, _ = _copy_fusion(tmp_path)
    model, _, _ = _model_with_adapters("bert_fuse_dynamic")
    (folder / "pytorch_model_adapter_fusion.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"adapter_fusion.safetensors or pytorch_model_adapter_fusion.bin"):
        adaptune.load_fusion(model, folder)
    (folder / "adapter_fusion_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"adapter_fusion_config.json: not valid JSON"):
        adaptune.load_fusion(model, folder)
    assert adaptune.list_fusions(model) == []


def test_missing_and_misplaced_weights_are_refused(tmp_path: Path) -> None:
    folder, _ = _copy_fusion(tmp_path)
    weights = folder / "pytorch_model_adapter_fusion.bin"
    tensors = torch.load(weights, weights_only=True)
    key = "bert.encoder.layer.1.output.adapter_fusion_layer.a,b.key.bias"
    assert key in tensors
    partial = {k: v for k, v in tensors.items() if k != key}
    torch.save(partial, weights)
    model, _, _ = _model_with_adapters("bert_fuse_dynamic")
    with pytest.raises(ValueError, match=r"no weights for fusion 'a,b' at block 1 \(ffn\) key.bias"):
        adaptune.load_fusion(model, folder)
    torch.save({**tensors, "bert.encoder.layer.7.output.adapter_fusion_layer.a,b.key.bias": tensors[key]}, weights)
    with pytest.raises(ValueError, match=r"layer.7.output.adapter_fusion_layer.a,b.key.bias has no place"):
        adaptune.load_fusion(model, folder)
    assert adaptune.list_fusions(model) == []


def test_folder_of_neither_kind_names_both_files(tmp_path: Path) -> None:
    model, _, _ = _model_with_adapters("bert_fuse_dynamic")
    with pytest.raises(FileNotFoundError, match=r"fusion_config.json.*adapter_fusion_config.json"):
        adaptune.load_fusion(model, tmp_path)
