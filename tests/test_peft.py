"""peft interop: folders written by the real peft (``tests/fixtures/peft``, made by
``tests/fixtures/make_peft_fixtures.py``) load into adaptune with peft's outputs, and adaptune's LoRA / (IA)³
exports load in peft with adaptune's outputs. Tolerance: max |Δ| <= 1e-5 (measured: about 1e-7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptune
from adaptune.formats.detect import FolderKind, folder_kind, load_folder

from .peft_cases import CASES, deterministic_base
from .tiny_models import make_inputs

FIXTURES = Path(__file__).parent / "fixtures" / "peft"
TOL = 1e-5


def _output(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_folder_gives_peft_outputs(case: str) -> None:
    model_type, method, _, _ = CASES[case]
    folder = FIXTURES / case
    expected = load_file(str(folder / "expected.safetensors"))
    inputs = {k: v for k, v in expected.items() if k != "output"}
    model = deterministic_base(model_type)
    base = _output(model, inputs)
    assert folder_kind(folder) is FolderKind.PEFT_ADAPTER
    name = load_folder(model, folder, activate=True)
    assert name == case and adaptune.adapter_config(model, name).method == method
    got = _output(model, inputs)
    assert (got - base).abs().max() > 1e-2, "the fixture's adapter must change the outputs"
    assert (got - expected["output"]).abs().max().item() <= TOL
    assert adaptune.check_adapters_fire(model, **inputs) == []


@pytest.mark.parametrize("case", ["bert_lora", "gpt2_lora", "llama_ia3", "gpt2_ia3"])
def test_export_loads_in_peft(case: str, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    model_type, _, _, _ = CASES[case]
    model = deterministic_base(model_type)
    name = adaptune.load_peft(model, FIXTURES / case, "mine")
    with torch.no_grad():  # move away from the fixture's values, so the export is tested on its own numbers
        for module in adaptune.adapter_modules(model, name).values():
            for p in module.parameters():
                p.mul_(1.5)
    inputs = make_inputs(model_type)
    ours = _output(model, inputs)
    out = adaptune.save_peft(model, name, tmp_path / "exported")
    loaded = peft.PeftModel.from_pretrained(deterministic_base(model_type), str(out)).eval()
    assert (_output(loaded, inputs) - ours).abs().max().item() <= TOL
    again = deterministic_base(model_type)  # and back: adaptune reads its own export
    adaptune.load_peft(again, out)
    assert (_output(again, inputs) - ours).abs().max().item() <= TOL


def test_structural_lora_exports(tmp_path: Path) -> None:
    """A LoRA placed by structure (targets='all' on Llama) exports with every module named."""
    peft = pytest.importorskip("peft")
    model = deterministic_base("llama")
    adaptune.add_adapter(model, "a", adaptune.LoraConfig(rank=3, alpha=6, targets="all"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in adaptune.adapter_modules(model, "a").values():
            module.B.copy_(torch.randn(module.B.shape, generator=g) * 0.1)
    inputs = make_inputs("llama")
    loaded = peft.PeftModel.from_pretrained(deterministic_base("llama"), str(adaptune.save_peft(model, "a", tmp_path)))
    assert (_output(loaded.eval(), inputs) - _output(model, inputs)).abs().max().item() <= TOL


@pytest.mark.parametrize(
    ("key", "value"),
    [("use_dora", True), ("rank_pattern", {"q_proj": 8}), ("bias", "all"), ("modules_to_save", ["classifier"])],
)
def test_unsupported_settings_are_named(key: str, value: object, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    shutil.copytree(FIXTURES / "llama_lora", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, key: value}))
    model = deterministic_base("llama")
    with pytest.raises(ValueError, match=rf"adapter_config\.json: peft setting {key}=.* is not supported"):
        adaptune.load_peft(model, folder)
    assert adaptune.list_adapters(model) == []


def test_other_peft_types_and_stray_tensors_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    shutil.copytree(FIXTURES / "bert_lora", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "P_TUNING"}))
    with pytest.raises(ValueError, match="peft_type='P_TUNING' is not supported"):
        adaptune.load_peft(deterministic_base("bert"), folder)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    from safetensors.torch import save_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    save_file(
        {**tensors, "base_model.model.pooler.dense.weight": torch.zeros(32, 32)},
        str(folder / "adapter_model.safetensors"),
    )
    with pytest.raises(ValueError, match=r"tensor 'base_model\.model\.pooler\.dense\.weight' is not a lora weight"):
        adaptune.load_peft(deterministic_base("bert"), folder)


def test_bottleneck_is_not_exported(tmp_path: Path) -> None:
    model = deterministic_base("bert")
    adaptune.add_adapter(model, "b", adaptune.AdapterConfig())
    with pytest.raises(ValueError, match="is a bottleneck adapter; peft folders hold LoRA or"):
        adaptune.save_peft(model, "b", tmp_path / "x")
