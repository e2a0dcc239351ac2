"""``Parallel(a, b, ...)``: on a batch of B rows the model returns k·B rows, rows ``[i·B, (i+1)·B)`` equal to
running child i alone; the batch is replicated at the first adapted block (layers below run once) or at the
model's entry (families listed in ``core.parallel``). Checked across the tiny architecture matrix with padding
masks and three methods at once (bottleneck, LoRA, (IA)³), on task heads of both paths, and for the rules."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

import adaptune
from adaptune import AdapterConfig, IA3Config, LoraConfig, Parallel, PerExample, Stack, split_parallel
from adaptune.core.composition import from_dict, parse, to_dict
from adaptune.core.model import adapter_slots

from .helpers import randomize, tiny_bert_classifier
from .tiny_models import MODEL_TYPES, build_model, make_inputs, output_tensors

# CLIP compares every image with every text: its outputs are not k separate results (see core.parallel).
MATRIX = [t for t in MODEL_TYPES if t != "clip"]
ENTRY = {"bloom", "falcon", "squeezebert", "wav2vec2"}


def _methods(model_type: str) -> dict[str, adaptune.MethodConfig]:
    # DeBERTa runs its query/key projections on the shared relative embeddings (1 row, not B): only adapters
    # elsewhere can differ per row there (as for PerExample).
    if model_type == "deberta-v2":
        return {"a": AdapterConfig.pfeiffer(), "b": AdapterConfig.houlsby()}
    return {"a": AdapterConfig.pfeiffer(), "b": LoraConfig(), "c": IA3Config()}


def _outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.clone() for t in output_tensors(model(**inputs))]


def _first(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]  # type: ignore[index,return-value]


def _path(model: torch.nn.Module) -> str:
    return next(iter(adapter_slots(model).values())).parallel_router.path


@pytest.mark.parametrize("model_type", MATRIX)
def test_parallel_equals_each_child_alone(model_type: str) -> None:
    model = build_model(model_type, seed=0)
    inputs = make_inputs(model_type)  # row 1 is right-padded where the model takes a mask
    for i, (name, config) in enumerate(_methods(model_type).items()):
        adaptune.add_adapter(model, name, config, activate=False)
        randomize(model, name, seed=i + 1)
    names = adaptune.list_adapters(model)
    alone = []
    for name in names:
        adaptune.set_active(model, name)
        alone.append(_outputs(model, inputs))
    adaptune.set_active(model, Parallel(*names))
    assert _path(model) == ("entry" if model_type in ENTRY else "blocks")
    together = _outputs(model, inputs)
    assert len(together) == len(alone[0])
    for j, out in enumerate(together):
        torch.testing.assert_close(out, torch.cat([a[j] for a in alone]), atol=1e-5, rtol=0)
        for child, part in zip(alone, split_parallel(out, len(names)), strict=True):
            torch.testing.assert_close(part, child[j], atol=1e-5, rtol=0)


def test_layers_below_the_first_adapted_block_run_once() -> None:
    model = tiny_bert_classifier(seed=0)  # 4 blocks; adapters in the top two only
    for name in ("a", "b", "c"):
        adaptune.add_adapter(model, name, AdapterConfig.pfeiffer(layers=(2, 3)), activate=False)
        randomize(model, name, seed=len(name))
    rows: dict[str, int] = {}
    for i, layer in enumerate(model.bert.encoder.layer):
        layer.register_forward_hook(lambda m, a, o, i=i: rows.__setitem__(f"block{i}", _first(o).shape[0]))
    model.bert.embeddings.register_forward_hook(lambda m, a, o: rows.__setitem__("embeddings", o.shape[0]))
    adaptune.set_active(model, Parallel("a", "b", "c"))
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert rows == {"embeddings": 2, "block0": 2, "block1": 2, "block2": 6, "block3": 6}
    assert out.shape[0] == 6


def _gpt2_classifier() -> torch.nn.Module:
    cfg = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=2, vocab_size=100, num_labels=3, pad_token_id=0)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def _llama_lm() -> torch.nn.Module:
    cfg = AutoConfig.for_model(
        "llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize(
    ("build", "path"), [(tiny_bert_classifier, "blocks"), (_gpt2_classifier, "entry"), (_llama_lm, "blocks")]
)
def test_task_heads_and_labels(build: object, path: str) -> None:
    model = build()  # type: ignore[operator]
    adaptune.add_adapter(model, "a", AdapterConfig.pfeiffer(), activate=False)
    adaptune.add_adapter(model, "b", LoraConfig(), activate=False)
    randomize(model, "a", seed=1)
    randomize(model, "b", seed=2)
    ids = torch.randint(5, 100, (3, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # GPT-2's head picks each row's last non-pad token from input_ids
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids if path != "entry" or "CausalLM" in type(model).__name__ else torch.tensor([0, 1, 2])
    if "SequenceClassification" in type(model).__name__:
        labels = torch.tensor([0, 1, 1])
    alone = []
    for name in ("a", "b"):
        adaptune.set_active(model, name)
        with torch.no_grad():
            alone.append(model(input_ids=ids, attention_mask=mask, labels=labels))
    adaptune.set_active(model, Parallel("a", "b"))
    assert _path(model) == path
    with torch.no_grad():
        both = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(both.logits, torch.cat([o.logits for o in alone]), atol=1e-5, rtol=0)
    # the loss averages over the k·B rows: the mean of the children's losses (equal row counts)
    torch.testing.assert_close(both.loss, torch.stack([o.loss for o in alone]).mean(), atol=1e-5, rtol=1e-5)


def test_nested_children_and_bare_base() -> None:
    model = tiny_bert_classifier(seed=2)
    for i, name in enumerate(("a", "b", "c")):
        adaptune.add_adapter(model, name, AdapterConfig.pfeiffer(), activate=False)
        randomize(model, name, seed=i)
    setups = [Stack("a", "b"), adaptune.Average("b", "c", weights=(3, 1)), None, "c"]
    ids = torch.randint(5, 100, (2, 5), generator=torch.Generator().manual_seed(3))
    alone = []
    for setup in setups:
        adaptune.set_active(model, setup)
        with torch.no_grad():
            alone.append(model(input_ids=ids).logits)
    adaptune.set_active(model, Parallel(*setups))
    with torch.no_grad():
        parts = split_parallel(model(input_ids=ids).logits, len(setups))
    for part, ref in zip(parts, alone, strict=True):
        torch.testing.assert_close(part, ref, atol=1e-5, rtol=0)


def test_switching_away_removes_the_hooks_and_deepcopy_keeps_them() -> None:
    model = tiny_bert_classifier(seed=0)
    adaptune.add_adapter(model, "a", AdapterConfig.pfeiffer(), activate=False)
    adaptune.add_adapter(model, "b", AdapterConfig.pfeiffer(), activate=False)
    ids = torch.randint(5, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    adaptune.set_active(model, Parallel("a", "b"))
    clone = copy.deepcopy(model)
    with torch.no_grad():
        assert clone(input_ids=ids).logits.shape[0] == 4
    adaptune.set_active(model, "a")
    assert not model._forward_pre_hooks and not model.bert.encoder.layer[0]._forward_pre_hooks
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape[0] == 2
        assert clone(input_ids=ids).logits.shape[0] == 4  # the copy's hooks belong to the copy


def test_generate_and_a_cache_are_refused() -> None:
    model = _llama_lm()
    adaptune.add_adapter(model, "a", LoraConfig(), activate=False)
    adaptune.add_adapter(model, "b", LoraConfig(), activate=False)
    adaptune.set_active(model, Parallel("a", "b"))
    with pytest.raises(RuntimeError, match="generate"):
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2)


def test_round_trip_and_nesting_rules() -> None:
    setup = Parallel("a", Stack("a", "b"), None)
    assert from_dict(to_dict(setup)) == setup
    assert parse("Parallel(a, Stack(a, b), Average(a:3, b:1))") == Parallel(
        "a", Stack("a", "b"), adaptune.Average("a", "b", weights=(3, 1))
    )
    model = tiny_bert_classifier(seed=0)
    adaptune.add_adapter(model, "a", AdapterConfig.pfeiffer(), activate=False)
    adaptune.add_adapter(model, "b", AdapterConfig.pfeiffer(), activate=False)
    for bad in (Stack("a", Parallel("a", "b")), PerExample([Parallel("a", "b")]), Parallel(Parallel("a", "b"))):
        with pytest.raises(ValueError, match="stand only at the top"):
            adaptune.set_active(model, bad)
    with pytest.raises(ValueError, match="Parallel cannot contain PerExample"):
        adaptune.set_active(model, Parallel(PerExample(["a"])))
    with pytest.raises(ValueError, match="not a multiple"):
        split_parallel(torch.zeros(5, 2), 2)
