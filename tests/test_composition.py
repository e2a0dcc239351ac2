"""Composition: each block's math against a direct re-computation, nesting rules, per-example batches,
fusion training/regulariser/save-load, averaging, gates, AdapterDrop, and no state change in forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import adaptune
from adaptune import AdapterConfig, Average, Fuse, PerExample, Stack
from adaptune.core.composition import adapter_names, from_dict, parse, to_dict
from adaptune.core.slot import ForwardState

from .helpers import logits, randomize, tiny_bert_classifier


def seq_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    return model, torch.randn(5, 8)


def raw_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(torch.relu(model[0](x)), model[2].weight, model[2].bias)


def add_three(model: nn.Module, **kw: object) -> None:
    cfg = AdapterConfig(target_modules=["2"], init="normal", init_std=0.5, bottleneck_size=3, **kw)
    for name in ("a", "b", "c"):
        adaptune.add_adapter(model, name, cfg)


def test_stack_and_average_math() -> None:
    model, x = seq_model()
    add_three(model)
    a, b, c = (model[2].adapters[n] for n in "abc")
    h = raw_output(model, x)
    adaptune.set_active(model, Stack("a", "b", "c"))
    torch.testing.assert_close(model(x), c(b(a(h))))
    adaptune.set_active(model, Average("a", "b", weights=(3, 1)))
    torch.testing.assert_close(model(x), 0.75 * a(h) + 0.25 * b(h))
    torch.testing.assert_close(model(x), h + 0.75 * a.branch(h) + 0.25 * b.branch(h))
    adaptune.set_active(model, Average("a", Stack("b", "c")))
    torch.testing.assert_close(model(x), 0.5 * a(h) + 0.5 * c(b(h)))


def test_fusion_math_by_hand() -> None:
    model, x = seq_model()
    add_three(model)
    fuse = adaptune.add_fusion(model, ["a", "b"], temperature=2.0)
    layer = model[2].adapters[fuse.name]
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    h = raw_output(model, x)
    a, b = model[2].adapters["a"], model[2].adapters["b"]
    u = [a.branch(h), b.branch(h)]  # adapter deltas, (5, 8) each
    q = h @ layer.query.weight.T + layer.query.bias
    k = [ui @ layer.key.weight.T + layer.key.bias for ui in u]
    v = [ui @ layer.value.weight.T for ui in u]
    scores = torch.stack([(q * ki).sum(-1) for ki in k], -1) / 2.0
    p = scores.softmax(-1)
    expected = h + p[:, :1] * v[0] + p[:, 1:] * v[1]
    torch.testing.assert_close(model(x), expected)


def test_fusion_with_uniform_attention_equals_average() -> None:
    """Value starts as identity; with a zero query every adapter gets p = 1/n, which is Average."""
    model, x = seq_model()
    add_three(model)
    fuse = adaptune.add_fusion(model, ["a", "b", "c"])
    with torch.no_grad():
        model[2].adapters[fuse.name].query.weight.zero_()
        model[2].adapters[fuse.name].query.bias.zero_()
    fused = model(x)
    adaptune.set_active(model, Average("a", "b", "c"))
    torch.testing.assert_close(fused, model(x))


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        (lambda: Fuse("a", "b", name="fz"), ValueError),  # no fusion layer named fz
        (lambda: Fuse(Stack("a", "b"), "c"), ValueError),
        (lambda: Average(Fuse("a", "b")), ValueError),
        (lambda: Stack("a", PerExample(["a"])), ValueError),
        (lambda: Stack("a", "zzz"), KeyError),
    ],
)
def test_invalid_nesting_is_refused(setup, error) -> None:
    model, _ = seq_model()
    add_three(model)
    with pytest.raises(error):
        adaptune.set_active(model, setup())


def test_valid_nesting_and_serialisation() -> None:
    model, x = seq_model()
    add_three(model)
    fuse = adaptune.add_fusion(model, ["b", "c"], activate=False)
    setup = Stack("a", fuse)
    adaptune.set_active(model, setup)
    h = raw_output(model, x)
    a = model[2].adapters["a"]
    adaptune.set_active(model, fuse)
    fused_after_a = model[2].adapters.apply_setup(fuse, ForwardState(a(h)))
    adaptune.set_active(model, setup)
    torch.testing.assert_close(model(x), fused_after_a)
    assert from_dict(to_dict(setup)) == setup
    assert parse("Stack(a, Fuse(b, c))") == setup
    assert parse("Average(a:3, b:1)") == Average("a", "b", weights=(3, 1))


def test_per_example_equals_one_by_one() -> None:
    model = tiny_bert_classifier()
    adaptune.add_adapter(model, "a", AdapterConfig.pfeiffer())
    adaptune.add_adapter(model, "b", AdapterConfig.houlsby())
    adaptune.add_adapter(model, "p", AdapterConfig.parallel())
    for i, n in enumerate("abp"):
        randomize(model, n, i)
    fuse = adaptune.add_fusion(model, ["a", "b"], activate=False)
    setups = ["a", None, "b", Stack("a", "p"), fuse, "a"]
    ids = torch.randint(0, 100, (len(setups), 7), generator=torch.Generator().manual_seed(3))
    adaptune.set_active(model, PerExample(setups))
    batched = logits(model, ids)
    for i, setup in enumerate(setups):
        adaptune.set_active(model, setup)
        torch.testing.assert_close(batched[i : i + 1], logits(model, ids[i : i + 1]), rtol=1e-5, atol=1e-6)


def test_per_example_is_a_block_with_children_like_the_others() -> None:
    setup = PerExample(["a", None, Stack("a", "b"), Fuse("a", "b")])
    assert setup.children == setup.setups == ("a", None, Stack("a", "b"), Fuse("a", "b"))  # setups: the old name
    assert adapter_names(setup) == ["a", "b"]
    data = to_dict(setup)
    assert data["type"] == "PerExample" and data["children"][:2] == ["a", None]
    assert from_dict(data) == setup
    old = {"type": "PerExample", "setups": ["a", None, {"type": "Stack", "children": ["a", "b"]}]}  # as written before
    assert from_dict(old) == PerExample(["a", None, Stack("a", "b")])
    model, _ = seq_model()
    add_three(model)
    with pytest.raises(ValueError, match="no fusion layer named 'fusion_a_b'"):  # found inside PerExample too
        adaptune.set_active(model, setup)
    with pytest.raises(ValueError, match="PerExample needs at least one child"):
        adaptune.set_active(model, PerExample([]))


def test_per_example_wrong_batch_size() -> None:
    model = tiny_bert_classifier()
    adaptune.add_adapter(model, "a")
    adaptune.set_active(model, PerExample(["a", None]))
    with pytest.raises(ValueError, match="per-example setup has 2 entries"):
        logits(model, torch.zeros(3, 4, dtype=torch.long))


def test_train_fusion_changes_only_fusion_and_head_and_regularises() -> None:
    model = tiny_bert_classifier()
    for i, n in enumerate("ab"):
        adaptune.add_adapter(model, n)
        randomize(model, n, i)
    fuse = adaptune.add_fusion(model, ["a", "b"])
    summary = adaptune.train_fusion(model, fuse, regularization=0.5)
    assert 0 < summary.trainable < summary.total
    ids, labels = torch.randint(0, 100, (4, 6)), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        for layer in adaptune.fusion_modules(model, fuse.name).values():
            layer.value.weight.add_(0.1)
    model.eval()
    plain = model(input_ids=ids, labels=labels).loss
    model.train()
    regularised = model(input_ids=ids, labels=labels).loss
    term = 0.5 * adaptune.fusion_value_loss(model, fuse.name)
    torch.testing.assert_close(regularised, plain + term)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    regularised.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(f".adapters.{fuse.name}." in n or n.startswith("classifier.") for n in changed)


def test_fusion_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny_bert_classifier()
    for i, n in enumerate("ab"):
        adaptune.add_adapter(model, n, AdapterConfig.houlsby())
        randomize(model, n, i)
    fuse = adaptune.add_fusion(model, ["a", "b"], temperature=0.5)
    with torch.no_grad():
        for layer in adaptune.fusion_modules(model, fuse.name).values():
            for p in layer.parameters():
                p.add_(torch.randn(p.shape) * 0.1)
    ids = torch.randint(0, 100, (3, 7))
    expected = logits(model, ids)
    folder = adaptune.save_fusion(model, fuse, tmp_path / "fusion")
    assert {p.name for p in folder.iterdir()} == {
        "fusion_config.json",
        "fusion.safetensors",
        "head.safetensors",
        "a",
        "b",
    }
    fresh = tiny_bert_classifier()
    assert adaptune.load_fusion(fresh, folder) == fuse
    assert torch.equal(logits(fresh, ids), expected)


def test_parameter_averaging() -> None:
    model, _ = seq_model()
    add_three(model)
    adaptune.average_adapters(model, ["a", "b"], "ab", weights=[1, 3])
    a, b, ab = (model[2].adapters[n] for n in ("a", "b", "ab"))
    torch.testing.assert_close(ab.down.weight, 0.25 * a.down.weight + 0.75 * b.down.weight)
    torch.testing.assert_close(ab.up.bias, 0.25 * a.up.bias + 0.75 * b.up.bias)


def test_gate_math() -> None:
    model, x = seq_model()
    adaptune.add_adapter(model, "g", AdapterConfig(target_modules=["2"], init="normal", init_std=0.5, gate=True))
    g = model[2].adapters["g"]
    with torch.no_grad():
        g.gate.weight.normal_()
    h = raw_output(model, x)
    branch = g.up(torch.relu(g.down(h)))
    torch.testing.assert_close(model(x), h + torch.sigmoid(g.gate(h)) * branch)


def test_adapter_drop() -> None:
    model = tiny_bert_classifier()
    adaptune.add_adapter(model, "a")
    randomize(model, "a")
    ids = torch.randint(0, 100, (2, 6))
    adaptune.set_adapter_drop(model, skip_first=2)
    silent = adaptune.check_adapters_fire(model, input_ids=ids)
    assert silent == [f"bert.encoder.layer.{i}.output.dense.adapters.a" for i in (0, 1)]
    dropped = logits(model, ids)
    reference = tiny_bert_classifier()
    adaptune.add_adapter(reference, "a", AdapterConfig(layers="2-3"))
    for path, module in adaptune.adapter_modules(reference, "a").items():
        module.load_state_dict(model.get_submodule(path).state_dict())
    torch.testing.assert_close(dropped, logits(reference, ids))

    adaptune.set_adapter_drop(model, skip_first=2, train_prob=1.0)
    assert adaptune.check_adapters_fire(model, input_ids=ids) == []  # eval: all run
    model.train()
    assert len(adaptune.check_adapters_fire(model, input_ids=ids)) == 2  # training: first two dropped
    adaptune.set_adapter_drop(model, 0)
    assert adaptune.check_adapters_fire(model, input_ids=ids) == []


def test_no_state_changes_inside_forward() -> None:
    model = tiny_bert_classifier()
    adaptune.add_adapter(model, "a", AdapterConfig.houlsby(dropout=0.1))
    adaptune.add_adapter(model, "p", AdapterConfig.parallel())
    fuse = adaptune.add_fusion(model, ["a", "p"])
    adaptune.train_fusion(model, fuse)
    model.train()

    def snapshot() -> dict[str, object]:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for name, m in model.named_modules():
            if isinstance(m, adaptune.core.slot.AdapterSlot):
                state[name] = (m.active, m.skip, m.drop_prob, m._pending_input)
        return state

    before = snapshot()
    ids = torch.randint(0, 100, (2, 6))
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    after = snapshot()
    assert before.keys() == after.keys()
    for k in before:
        if isinstance(before[k], torch.Tensor):
            assert torch.equal(before[k], after[k]), k
        else:
            assert before[k] == after[k], k


def test_swapping_the_language_adapter_under_a_task_adapter() -> None:
    model = tiny_bert_classifier()
    for i, n in enumerate(("lang_en", "lang_zh", "task")):
        adaptune.add_adapter(model, n)
        randomize(model, n, i)
    adaptune.train_adapter(model, "task", setup=Stack("lang_en", "task"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapters.task." in n or n.startswith("classifier.") for n in trainable)
    ids = torch.randint(0, 100, (2, 6))
    en = logits(model, ids)
    adaptune.set_active(model, Stack("lang_zh", "task"))
    zh = logits(model, ids)
    assert not torch.equal(en, zh)
    adaptune.set_active(model, Stack("lang_en", "task"))
    assert torch.equal(logits(model, ids), en)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="SFAtackuseverg(),: ab1", max_size=30))
def test_parse_accepts_or_raises_value_error(text: str) -> None:
    try:
        node = parse(text)
    except ValueError:
        return
    assert from_dict(to_dict(node)) == node


def test_corrupt_fusion_weights_are_refused_and_nothing_is_left(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = tiny_bert_classifier()
    for n in "ab":
        adaptune.add_adapter(model, n)
    fuse = adaptune.add_fusion(model, ["a", "b"])
    folder = adaptune.save_fusion(model, fuse, tmp_path / "fusion")
    tensors = load_file(folder / "fusion.safetensors")
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(folder / "fusion.safetensors"))
    fresh = tiny_bert_classifier()
    adaptune.add_adapter(fresh, "a")  # already there before: must survive the failed load
    with pytest.raises(ValueError, match="NaN or infinite"):
        adaptune.load_fusion(fresh, folder)
    assert adaptune.list_fusions(fresh) == []
    assert adaptune.list_adapters(fresh) == ["a"]  # "b", loaded by the failed call, is gone again
