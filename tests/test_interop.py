"""AdapterHub interop: adapters saved by the real ``adapters`` 1.3.0 (Transformers 4.57) reproduce their
outputs on Transformers 5 through adaptune.

Fixtures: tests/fixtures/adapterhub, made by scripts/make_adapterhub_fixtures.py.
"""

from __future__ import annotations

import pytest
import torch

from adaptune.formats.adapterhub import (
    is_adapterhub_folder,
    load_adapterhub,
    load_adapterhub_head,
    load_adapterhub_setup,
)

from .adapterhub_cases import ROOT, build_base, case_names, load_case

# case -> the AdapterHub key whose value adaptune cannot express yet (named in the error)
UNSUPPORTED = {
    "bert_double_seq_bn_gating": "use_gating",
    "bert_seq_bn_gating": "use_gating",
    "bert_par_bn_mh": "mh_adapter",
    "bert_seq_bn_ln_after_adapter_residual_before_ln": "adapter_residual_before_ln",
    "bert_seq_bn_residual_post_add": "residual_before_ln",
    "bert_seq_bn_rf_dict": "reduction_factor",
    "bert_seq_bn_scaling_channel": "scaling",
    "gpt2_seq_bn": "post-LN model",
    "gpt2_double_seq_bn_inv": "position embeddings",  # AdapterHub's GPT-2 coupling reads wte + wpe, adaptune's wte
    "llama_seq_bn": "post-LN model",
}
# ALBERT's attention adapter sees x and h swapped inside `adapters`; adaptune does not copy that quirk.
QUIRKS = {"albert_double_seq_bn"}
CASES = case_names()


def run_case(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    case, inputs, expected = load_case(name)
    layout = case["layout"]
    if case.get("head"):
        from transformers import AutoModelForSequenceClassification

        base = build_base(case, name)
        config = base.config
        config.num_labels = case["head"].get("num_labels", 3)
        model = AutoModelForSequenceClassification.from_config(config).eval()
        model.base_model.load_state_dict(base.state_dict())
    else:
        model = build_base(case, name)
    if "adapter_dir" in layout:
        folder = ROOT / name / layout["adapter_dir"]
        assert is_adapterhub_folder(folder)
        load_adapterhub(model, folder)
        if case.get("head"):
            load_adapterhub_head(model, folder)
    else:
        load_adapterhub_setup(model, ROOT / name / layout["setup_dir"])
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states[-1] if case.get("head") else out.last_hidden_state
    mask = inputs["attention_mask"].bool()
    diff = (hidden - expected["last_hidden_state"])[mask].abs().max()
    if "logits" in expected:
        diff = torch.maximum(diff, (out.logits - expected["logits"]).abs().max())
    changed = (expected["last_hidden_state"] - expected["base_last_hidden_state"])[mask].abs().max()
    return diff, changed, mask


@pytest.mark.parametrize("name", [c for c in CASES if c not in UNSUPPORTED and c not in QUIRKS])
def test_reproduces_adapterhub_outputs(name: str) -> None:
    diff, changed, _ = run_case(name)
    assert changed > 0.1, "fixture adapter barely changes the output: the comparison would prove little"
    assert diff <= 1e-5, f"{name}: max |Δ| = {diff:.3g}"


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_settings_fail_clearly(name: str) -> None:
    with pytest.raises(ValueError, match=UNSUPPORTED[name]):
        run_case(name)


def test_known_quirk_is_not_copied() -> None:
    diff, _, _ = run_case("albert_double_seq_bn")
    assert diff > 1e-3  # documented: `adapters` swaps x and h in ALBERT's attention adapter


def test_pickle_with_code_is_refused(tmp_path) -> None:
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(ROOT / "bert_seq_bn" / "adapter", folder)

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Boom()}, folder / "pytorch_adapter.bin")
    case, _, _ = load_case("bert_seq_bn")
    with pytest.raises(ValueError, match="refused"):
        load_adapterhub(build_base(case, "bert_seq_bn"), folder)


def test_load_adapter_reads_adapterhub_folders() -> None:
    import adaptune

    case, inputs, expected = load_case("roberta_seq_bn")
    model = build_base(case, "roberta_seq_bn")
    assert adaptune.load_adapter(model, ROOT / "roberta_seq_bn" / "adapter") == "a"
    with torch.no_grad():
        out = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].bool()
    assert (out - expected["last_hidden_state"])[mask].abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["bert_seq_bn", "bert_double_seq_bn", "bert_par_bn", "bert_seq_bn_ln_before",
                                  "bert_scaled_par_bn", "roberta_seq_bn"])  # fmt: skip
def test_export_to_adapterhub_and_back(name: str, tmp_path) -> None:
    """save_adapter(format="adapterhub") writes what load_adapter reads back to the same outputs. (The real
    `adapters` 1.3.0 reproduces the fixtures from these exports too: scripts/adapterhub_roundtrip.py.)"""
    import adaptune

    case, inputs, _ = load_case(name)
    model = build_base(case, name)
    load_adapterhub(model, ROOT / name / case["layout"]["adapter_dir"])
    folder = adaptune.save_adapter(model, "a", tmp_path / "hub", format="adapterhub")
    assert is_adapterhub_folder(folder)
    fresh = build_base(case, name)
    adaptune.load_adapter(fresh, folder)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


def test_export_refuses_what_adapterhub_cannot_express(tmp_path) -> None:
    import adaptune

    case, _, _ = load_case("bert_seq_bn")
    model = build_base(case, "bert_seq_bn")
    adaptune.add_adapter(model, "g", adaptune.AdapterConfig(placement="ffn", gate=True))
    with pytest.raises(ValueError, match="gate"):
        adaptune.save_adapter(model, "g", tmp_path / "x", format="adapterhub")


def test_non_finite_adapterhub_weights_are_refused(tmp_path) -> None:
    import shutil

    folder = tmp_path / "nan"
    shutil.copytree(ROOT / "roberta_seq_bn" / "adapter", folder)
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "adapter.safetensors")
    key = sorted(k for k in tensors if k.endswith("adapter_up.weight"))[0]
    tensors[key] = torch.full_like(tensors[key], float("inf"))
    save_file(tensors, str(folder / "adapter.safetensors"))
    case, _, _ = load_case("roberta_seq_bn")
    model = build_base(case, "roberta_seq_bn")
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_adapterhub(model, folder)
    import adaptune

    assert adaptune.list_adapters(model) == []
