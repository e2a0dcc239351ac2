"""AdapterHub LoRA, (IA)³, Compacter / Compacter++ and prefix-tuning folders, saved by the real ``adapters`` 1.3.0
(Transformers 4.57), reproduce its outputs on Transformers 5 through adaptune.

Fixtures: tests/fixtures/adapterhub (``scripts/make_adapterhub_fixtures.py``; formulas in the README there).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adaptune.core.model import adapter_config, delete_adapter, list_adapters, set_active, train_adapter
from adaptune.formats.adapterhub import load_adapterhub
from adaptune.formats.detect import FolderKind, folder_kind, load_folder
from adaptune.methods.compacter import CompacterConfig
from adaptune.methods.ia3 import IA3Config
from adaptune.methods.lora import LoraConfig
from adaptune.methods.prefix import PrefixConfig

from .adapterhub_cases import ROOT, build_base, load_case

# case -> (adaptune config class, the fields it must have)
CASES: dict[str, tuple[type, dict[str, object]]] = {
    "bert_lora": (LoraConfig, {"rank": 4, "alpha": 8.0}),
    "bert_lora_all": (LoraConfig, {"rank": 4, "alpha": 16.0}),
    "gpt2_lora": (LoraConfig, {"rank": 8, "alpha": 16.0}),  # fused c_attn: q and v blocks -> rank 2r, alpha·2
    "gpt2_lora_v": (LoraConfig, {"rank": 4, "alpha": 8.0}),  # one fused matrix: the v third only
    "gpt2_lora_qkv": (LoraConfig, {"rank": 6, "alpha": 12.0}),
    "llama_lora": (LoraConfig, {"rank": 4, "alpha": 8.0}),
    "bert_ia3": (IA3Config, {}),
    "gpt2_ia3": (IA3Config, {}),
    "gpt2_ia3_qkv": (IA3Config, {}),
    "llama_ia3": (IA3Config, {}),
    "bert_compacter": (CompacterConfig, {"placement": "both", "phm_dim": 4, "factorized_phm_W": True}),
    "bert_compacter_pp": (CompacterConfig, {"placement": "ffn_post_ln"}),
    "bert_compacter_full_w": (CompacterConfig, {"placement": "both", "phm_dim": 2, "factorized_phm_W": False}),
    "bert_prefix": (PrefixConfig, {"reparam": True, "reparam_hidden": 16, "shift_positions": False}),
    "bert_prefix_flat": (PrefixConfig, {"reparam": False, "shift_positions": False}),
    "gpt2_prefix": (PrefixConfig, {"reparam": True, "prefix_length": 5, "shift_positions": False}),
    "llama_prefix": (PrefixConfig, {"reparam": True, "prefix_length": 5, "shift_positions": False}),
}


def _folder(name: str) -> Path:
    return ROOT / name / "adapter"


def _outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


@pytest.mark.parametrize("name", sorted(CASES))
def test_reproduces_adapterhub_outputs(name: str) -> None:
    case, inputs, expected = load_case(name)
    mask = inputs["attention_mask"].bool()
    changed = (expected["last_hidden_state"] - expected["base_last_hidden_state"])[mask].abs().max()
    assert changed > 0.1, "fixture adapter barely changes the output: the comparison would prove little"
    assert folder_kind(_folder(name)) is FolderKind.HUB_ADAPTER
    model = build_base(case, name)
    assert load_folder(model, _folder(name), activate=True) == "a"
    diff = (_outputs(model, inputs) - expected["last_hidden_state"])[mask].abs().max()
    assert diff <= 1e-5, f"{name}: max |Δ| = {diff:.3g}"
    kind, fields = CASES[name]
    config = adapter_config(model, "a")
    assert type(config) is kind
    assert {k: getattr(config, k) for k in fields} == fields


@pytest.mark.parametrize("name", ["bert_lora_all", "gpt2_ia3", "bert_compacter", "bert_prefix"])
def test_base_stays_frozen_and_delete_restores_it(name: str) -> None:
    case, inputs, _ = load_case(name)
    model = build_base(case, name)
    model.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = _outputs(model, inputs)
    load_adapterhub(model, _folder(name), name="hub")
    base_now = {k: v for k, v in model.state_dict().items() if k in before}
    assert base_now.keys() == before.keys() and all(torch.equal(before[k], base_now[k]) for k in before)
    own = {n for n, p in model.named_parameters() if n not in before}
    assert own and not any(p.requires_grad for n, p in model.named_parameters() if n in before)
    train_adapter(model, "hub")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == own
    model.eval()
    assert not torch.equal(_outputs(model, inputs), plain)
    set_active(model, None)
    delete_adapter(model, "hub")
    assert list_adapters(model) == []
    assert model.state_dict().keys() == before.keys()
    assert torch.equal(_outputs(model, inputs), plain)


def _edited(tmp_path: Path, name: str, **changes: object) -> Path:
    """A copy of a fixture's adapter folder with ``changes`` written into its config."""
    folder = tmp_path / name
    shutil.copytree(_folder(name), folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["config"].update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize(
    ("name", "changes", "key"),
    [
        ("bert_lora", {"use_gating": True}, "use_gating=True"),
        ("bert_lora", {"use_dora": True}, "use_dora=True"),
        ("bert_lora", {"composition_mode": "mul"}, "composition_mode='mul'"),
        ("bert_lora", {"attn_matrices": ["q", "o"]}, "attn_matrices"),
        ("bert_lora", {"vera_d": 0.1}, "vera_d=0.1"),
        ("bert_ia3", {"r": 2}, "r=2"),
        ("bert_compacter", {"shared_phm_rule": False}, "shared_phm_rule=False"),
        ("bert_compacter", {"ln_before": True}, "ln_before=True"),
        ("bert_compacter", {"scaling": "learned"}, "scaling='learned'"),
        ("bert_compacter_pp", {"use_gating": True}, "use_gating=True"),
        ("bert_prefix", {"use_gating": True}, "use_gating=True"),
        ("bert_prefix", {"leave_out": [0]}, "leave_out=\\[0\\]"),
        ("bert_prefix", {"non_linearity": "relu"}, "non_linearity='relu'"),
        ("bert_prefix", {"dropout": 0.1}, "dropout=0.1"),
    ],
)
def test_unsupported_setting_is_named(tmp_path: Path, name: str, changes: dict, key: str) -> None:
    case, _, _ = load_case(name)
    model = build_base(case, name)
    with pytest.raises(ValueError, match=key):
        load_adapterhub(model, _edited(tmp_path, name, **changes))
    assert list_adapters(model) == []


def test_prefix_on_an_unchecked_model_type_is_refused() -> None:
    """RoBERTa counts positions from its padding index: AdapterHub's 0..T-1 convention is not reproduced there."""
    case, _, _ = load_case("roberta_seq_bn")
    model = build_base(case, "roberta_seq_bn")
    with pytest.raises(ValueError, match="'roberta'"):
        load_adapterhub(model, _folder("bert_prefix"))
    assert list_adapters(model) == []


@pytest.mark.parametrize("name", ["gpt2_prefix", "llama_prefix"])
def test_decoder_prefix_generates_the_same_with_and_without_cache(name: str) -> None:
    """Tokens keep positions 0..T-1 at the prefill and past..past+t at each decode step (shift_positions=False)."""
    from transformers import AutoModelForCausalLM

    case, inputs, _ = load_case(name)
    base = build_base(case, name)
    model = AutoModelForCausalLM.from_config(base.config).eval()
    model.base_model.load_state_dict(base.state_dict())
    load_adapterhub(model, _folder(name))
    ids = inputs["input_ids"][:1, :5]
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=True, **kw)
        uncached = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=False, **kw)
    assert cached.shape == (1, 9) and torch.equal(cached, uncached)


def test_wrong_shapes_leave_no_adapter(tmp_path: Path) -> None:
    """A LoRA folder for a wider model fails naming the tensor, and nothing is left attached."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "wide"
    shutil.copytree(_folder("bert_lora"), folder)
    tensors = load_file(folder / "adapter.safetensors")
    key = next(k for k in tensors if k.endswith("lora_B"))
    tensors[key] = torch.zeros(48, 4)
    save_file(tensors, folder / "adapter.safetensors")
    case, _, _ = load_case("bert_lora")
    model = build_base(case, "bert_lora")
    with pytest.raises(ValueError, match="lora_B"):
        load_adapterhub(model, folder)
    assert list_adapters(model) == []
