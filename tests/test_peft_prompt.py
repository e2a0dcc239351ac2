"""peft prompt learning: PROMPT_TUNING and PREFIX_TUNING folders written by the real peft (``tests/fixtures/peft``,
``PROMPT_CASES`` of ``tests/fixtures/make_peft_fixtures.py``) load into adaptune with peft's outputs.

Compared: a BERT classifier's logits (prompt + peft's saved head), a bare BERT's ``last_hidden_state`` (prefix), and
a causal LM's logits at every position (prompt tuning keeps its virtual positions in front, as peft) plus the greedy
tokens of ``generate`` (cache on and off) against peft's greedy decoding. Tolerance: max |Δ| <= 1e-5 (measured: 0
to 2.4e-7, the folded prefix MLP's float rounding). adaptune's prompt / prefix adapters export to folders the real
peft loads with adaptune's outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import adaptune
from adaptune.formats.detect import FolderKind, folder_kind, load_folder

from .peft_cases import PROMPT_CASES, task_base
from .tiny_models import tiny_config

FIXTURES = Path(__file__).parent / "fixtures" / "peft"
TOL = 1e-5
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _fixture(case: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The case's base model, its model inputs and everything ``expected.safetensors`` holds."""
    model_type, task_type, _, _ = PROMPT_CASES[case]
    expected = load_file(str(FIXTURES / case / "expected.safetensors"))
    return task_base(model_type, task_type), {k: v for k, v in expected.items() if k in _MODEL_INPUTS}, expected


def _output(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)[0]  # logits, or last_hidden_state for the bare encoder


@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
def test_peft_prompt_folder_gives_peft_outputs(case: str) -> None:
    _, task_type, method, options = PROMPT_CASES[case]
    model, inputs, expected = _fixture(case)
    base = _output(model, inputs)
    assert folder_kind(FIXTURES / case) is FolderKind.PEFT_ADAPTER
    name = load_folder(model, FIXTURES / case, activate=True)
    config = adaptune.adapter_config(model, name)
    assert name == case and config.method == method
    if method == "prompt":
        assert config.position == "start"  # peft puts the soft prompt before every token
    else:
        assert not config.reparam  # peft saves the prefix its MLP computes: the folded form
    got = _output(model, inputs)
    assert (got - expected["output"]).abs().max().item() <= TOL
    shift = options["num_virtual_tokens"] if method == "prompt" and task_type == "CAUSAL_LM" else 0
    assert (got[:, shift:] - base).abs().max() > 1e-2, "the fixture's adapter must change the outputs"
    assert adaptune.check_adapters_fire(model, **inputs) == []
    if "generated" in expected:  # peft's greedy tokens (with EOS handling as generate's)
        ids = expected["gen_input_ids"]
        kw = {"attention_mask": torch.ones_like(ids), "do_sample": False, "pad_token_id": 0, "max_new_tokens": 6}
        with torch.no_grad():
            for cache in (True, False):
                assert torch.equal(model.generate(input_ids=ids, use_cache=cache, **kw), expected["generated"])


def test_classifier_head_loads_and_delete_restores_base() -> None:
    """peft's SEQ_CLS folder carries its trained head (modules_to_save); load_head=False leaves the model's."""
    model, inputs, expected = _fixture("bert_prompt")
    base = _output(model, inputs)
    saved = load_file(str(FIXTURES / "bert_prompt" / "adapter_model.safetensors"))
    name = load_folder(model, FIXTURES / "bert_prompt", activate=True, load_head=False)
    assert torch.equal(model.classifier.weight, task_base("bert", "SEQ_CLS").classifier.weight)
    assert (_output(model, inputs) - expected["output"]).abs().max() > 1e-2  # the base head gives other logits
    adaptune.set_active(model, None)
    adaptune.delete_adapter(model, name)
    assert torch.equal(_output(model, inputs), base) and not adaptune.list_adapters(model)
    adaptune.load_peft(model, FIXTURES / "bert_prompt", "again")
    assert torch.equal(model.classifier.weight, saved["base_model.classifier.weight"])
    assert (_output(model, inputs) - expected["output"]).abs().max().item() <= TOL


@pytest.mark.parametrize("case", ["llama_prompt", "gpt2_prefix_proj", "bert_prefix"])
def test_delete_restores_base(case: str) -> None:
    model, inputs, _ = _fixture(case)
    base = _output(model, inputs)
    name = adaptune.load_peft(model, FIXTURES / case)
    adaptune.set_active(model, None)
    adaptune.delete_adapter(model, name)
    assert torch.equal(_output(model, inputs), base)
    assert not adaptune.list_adapters(model) and not model._forward_pre_hooks


def _edited(tmp_path: Path, case: str, **changes: object) -> Path:
    folder = tmp_path / case
    shutil.copytree(FIXTURES / case, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text()) | changes
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(
    ("case", "changes", "match"),
    [
        ("llama_prefix", {"num_transformer_submodules": 2}, "num_transformer_submodules=2"),
        ("llama_prompt", {"task_type": "SEQ_2_SEQ_LM"}, "task_type='SEQ_2_SEQ_LM'"),
        ("llama_prompt", {"task_type": "TOKEN_CLS"}, "task_type='TOKEN_CLS'"),
        ("llama_prompt", {"token_dim": 64}, "token_dim=64"),
        ("llama_prefix", {"num_attention_heads": 4}, "num_attention_heads=4 does not fit LlamaForCausalLM"),
        ("llama_prefix", {"num_layers": 3}, "num_layers=3"),
        ("bert_prefix", {"num_virtual_tokens": 5}, "prompt_embeddings .* shape"),
        ("gpt2_prompt", {"num_virtual_tokens": 0}, "num_virtual_tokens=0"),
        ("llama_prompt", {"prompt_tuning_new_option": 3}, "prompt_tuning_new_option=3 is not supported"),
        ("llama_prompt", {"peft_type": "P_TUNING"}, "peft_type='P_TUNING' is not supported"),
    ],
)
def test_unsupported_settings_are_named(tmp_path: Path, case: str, changes: dict, match: str) -> None:
    model_type, task_type, _, _ = PROMPT_CASES[case]
    model = task_base(model_type, task_type)
    with pytest.raises(ValueError, match=match):
        adaptune.load_peft(model, _edited(tmp_path, case, **changes))
    assert not adaptune.list_adapters(model)  # nothing half-loaded is left behind


def test_unexpected_tensor_is_named(tmp_path: Path) -> None:
    folder = _edited(tmp_path, "llama_prompt")
    state = load_file(str(folder / "adapter_model.safetensors"))
    save_file(
        {**state, "base_model.model.lm_head.weight": torch.zeros(128, 32)}, str(folder / "adapter_model.safetensors")
    )
    model = task_base("llama", "CAUSAL_LM")
    with pytest.raises(ValueError, match=r"'base_model\.model\.lm_head\.weight' is neither"):
        adaptune.load_peft(model, folder)
    assert not adaptune.list_adapters(model)


EXPORTS = {  # case -> (model type, peft task_type, adaptune config)
    "llama_prompt": ("llama", "CAUSAL_LM", adaptune.PromptConfig(num_virtual_tokens=3)),
    "llama_prefix_mlp": ("llama", "CAUSAL_LM", adaptune.PrefixConfig(prefix_length=2, reparam_hidden=8)),
    "gpt2_prefix": ("gpt2", "CAUSAL_LM", adaptune.PrefixConfig(prefix_length=3, reparam=False)),
    "bert_cls_prompt": ("bert", "SEQ_CLS", adaptune.PromptConfig(num_virtual_tokens=2)),
    "bert_prefix": ("bert", "FEATURE_EXTRACTION", adaptune.PrefixConfig(prefix_length=2, reparam=False)),
}


@pytest.mark.parametrize("case", sorted(EXPORTS))
def test_export_loads_in_peft(case: str, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    model_type, task_type, config = EXPORTS[case]
    model = task_base(model_type, task_type)
    torch.manual_seed(3)
    adaptune.add_adapter(model, "mine", config)
    if task_type == "SEQ_CLS":  # a head trained along with the prompt goes into the folder
        with torch.no_grad():
            model.classifier.weight.mul_(-2)
    inputs = _fixture(f"{model_type}_prompt")[1]  # a padded row; token_type_ids for BERT
    if task_type == "FEATURE_EXTRACTION":  # peft's feature-extraction model drops token_type_ids (it warns)
        inputs.pop("token_type_ids", None)
    ours = _output(model, inputs)
    out = adaptune.save_peft(model, "mine", tmp_path / "exported")
    loaded = peft.PeftModel.from_pretrained(task_base(model_type, task_type), str(out)).eval()
    assert (_output(loaded, inputs) - ours).abs().max().item() <= TOL
    again = task_base(model_type, task_type)  # and back: adaptune reads its own export
    adaptune.load_peft(again, out)
    assert (_output(again, inputs) - ours).abs().max().item() <= TOL


def test_export_refuses_what_peft_cannot_express(tmp_path: Path) -> None:
    model = task_base("bert", "SEQ_CLS")
    adaptune.add_adapter(model, "after", adaptune.PromptConfig(num_virtual_tokens=2, position="after_first"))
    with pytest.raises(ValueError, match="position='after_first'; peft puts the prompt at the start only"):
        adaptune.save_peft(model, "after", tmp_path / "a")
    tagger = transformers.AutoModelForTokenClassification.from_config(tiny_config("bert"))
    adaptune.add_adapter(tagger, "p", adaptune.PromptConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="BertForTokenClassification: peft's prompt learning for this task class"):
        adaptune.save_peft(tagger, "p", tmp_path / "b")
