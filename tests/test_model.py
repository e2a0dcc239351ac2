"""Model API on a tiny BERT classifier and plain torch modules: add, activate, train, delete, inspect."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import adaptune
from adaptune import AdapterConfig

from .helpers import logits, randomize, tiny_bert_classifier


def test_new_adapter_is_identity_and_fires(bert: nn.Module, ids: torch.Tensor) -> None:
    base = logits(bert, ids)
    adaptune.add_adapter(bert, "a", AdapterConfig.houlsby())
    assert torch.equal(logits(bert, ids), base)
    assert adaptune.check_adapters_fire(bert, input_ids=ids) == []
    assert adaptune.active_adapters(bert) == ["a"]


def test_train_adapter_freezes_exactly_the_base(bert: nn.Module) -> None:
    adaptune.add_adapter(bert, "a", AdapterConfig.pfeiffer())
    summary = adaptune.train_adapter(bert, "a")
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    expected = {
        f"bert.encoder.layer.{i}.output.dense.adapters.a.{k}"
        for i in range(4)
        for k in ("down.weight", "down.bias", "up.weight", "up.bias")
    }
    assert trainable == expected | {"classifier.weight", "classifier.bias"}
    assert summary.trainable == sum(p.numel() for n, p in bert.named_parameters() if n in trainable)
    assert 0 < summary.percent < 10


def test_optimizer_step_changes_only_adapter_and_head(bert: nn.Module, ids: torch.Tensor) -> None:
    adaptune.add_adapter(bert, "a", AdapterConfig.houlsby())
    adaptune.train_adapter(bert, "a")
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    opt = torch.optim.AdamW([p for p in bert.parameters() if p.requires_grad], lr=1e-2)
    loss = bert(input_ids=ids, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    opt.step()
    changed = {n for n, p in bert.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the step changed nothing"
    assert all(".adapters.a." in n or n.startswith("classifier.") for n in changed)
    assert any(n.endswith("up.weight") for n in changed)


def test_delete_restores_base_bit_for_bit(bert: nn.Module, ids: torch.Tensor) -> None:
    base = logits(bert, ids)
    keys = list(bert.state_dict())
    for i, placement in enumerate(["attention", "ffn", "parallel"]):
        adaptune.add_adapter(bert, f"a{i}", AdapterConfig(placement=placement))
        randomize(bert, f"a{i}", i)
    adaptune.set_active(bert, ["a0", "a1", "a2"])
    assert not torch.equal(logits(bert, ids), base)
    adaptune.set_active(bert, None)  # deleting an adapter of the active setup is refused
    for name in adaptune.list_adapters(bert):
        adaptune.delete_adapter(bert, name)
    assert torch.equal(logits(bert, ids), base)
    assert list(bert.state_dict()) == keys
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in bert.modules())


def test_deactivate_and_switch(bert: nn.Module, ids: torch.Tensor) -> None:
    base = logits(bert, ids)
    adaptune.add_adapter(bert, "a")
    adaptune.add_adapter(bert, "b")
    randomize(bert, "a", 1)
    randomize(bert, "b", 2)
    assert adaptune.active_adapters(bert) == ["b"]
    out_b = logits(bert, ids)
    adaptune.set_active(bert, "a")
    out_a = logits(bert, ids)
    adaptune.set_active(bert, None)
    assert torch.equal(logits(bert, ids), base)
    assert not torch.equal(out_a, out_b)
    assert adaptune.list_adapters(bert) == ["a", "b"]


def test_serial_order_on_plain_torch_module() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    x = torch.randn(4, 8)
    cfg = AdapterConfig(target_modules=["2"], init="normal", init_std=0.5, bottleneck_size=3)
    adaptune.add_adapter(model, "a", cfg)
    adaptune.add_adapter(model, "b", cfg)
    adaptune.set_active(model, ["a", "b"])
    a, b = model[2].adapters["a"], model[2].adapters["b"]
    h = model[2](model[1](model[0](x)))  # the hooked call itself: adapters included
    raw = nn.functional.linear(torch.relu(model[0](x)), model[2].weight, model[2].bias)
    torch.testing.assert_close(h, b(a(raw)))
    torch.testing.assert_close(model(x), b(a(raw)))
    adaptune.set_active(model, ["b", "a"])
    torch.testing.assert_close(model(x), a(b(raw)))


def test_parallel_reads_the_ffn_input_in_bert(bert: nn.Module, ids: torch.Tensor) -> None:
    layer = bert.bert.encoder.layer[1]
    seen: dict[str, torch.Tensor] = {}
    layer.intermediate.register_forward_hook(lambda m, a, o: seen.__setitem__("x", a[0]))
    layer.output.dense.register_forward_hook(lambda m, a, o: seen.__setitem__("raw", o))
    adaptune.add_adapter(bert, "p", AdapterConfig.parallel())
    randomize(bert, "p")
    layer.output.dense.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o))
    logits(bert, ids)
    adapter = layer.output.dense.adapters["p"]
    torch.testing.assert_close(seen["out"], seen["raw"] + adapter.branch(seen["x"]))


def test_layer_selection(bert: nn.Module) -> None:
    targets = adaptune.add_adapter(bert, "a", AdapterConfig(layers="last:2"))
    assert [t.layer for t in targets] == [2, 3]
    assert adaptune.adapter_targets(bert, "a") == [f"bert.encoder.layer.{i}.output.dense" for i in (2, 3)]


def test_plan_counts_match_added_parameters(bert: nn.Module) -> None:
    cfg = AdapterConfig.houlsby(reduction_factor=4)
    p = adaptune.plan(bert, cfg)
    adaptune.add_adapter(bert, "a", cfg)
    added = sum(x.numel() for m in adaptune.adapter_modules(bert, "a").values() for x in m.parameters())
    assert p.total_adapter_params == added
    assert len(p.targets) == 8
    assert "attention" in p.table()


def test_delete_refuses_an_adapter_of_the_active_setup(bert: nn.Module, ids: torch.Tensor) -> None:
    for name in ("a", "b"):
        adaptune.add_adapter(bert, name, AdapterConfig(init="normal"))
    adaptune.set_active(bert, ["a", "b"])
    stacked = logits(bert, ids)
    with pytest.raises(ValueError, match=r"'a' is part of the active setup Stack\(.*'a', 'b'.*set_active"):
        adaptune.delete_adapter(bert, "a")
    # Refused means untouched: both adapters, the setup and the outputs are as before.
    assert adaptune.list_adapters(bert) == ["a", "b"]
    assert adaptune.active_adapters(bert) == ["a", "b"]
    assert torch.equal(logits(bert, ids), stacked)
    adaptune.set_active(bert, "b")
    only_b = logits(bert, ids)
    adaptune.delete_adapter(bert, "a")  # not in the setup any more: allowed, and the setup stays
    assert adaptune.list_adapters(bert) == ["b"]
    assert adaptune.active_setup(bert) == "b"
    assert torch.equal(logits(bert, ids), only_b)


def test_delete_refuses_an_adapter_inside_a_fusion_setup(bert: nn.Module) -> None:
    for name in ("a", "b", "c"):
        adaptune.add_adapter(bert, name, AdapterConfig(init="normal"))
    fuse = adaptune.add_fusion(bert, ["a", "b"])
    with pytest.raises(ValueError, match="active setup Fuse"):
        adaptune.delete_adapter(bert, "b")
    adaptune.delete_adapter(bert, "c")
    assert adaptune.active_setup(bert) == fuse


def test_deepcopy_is_independent(bert: nn.Module, ids: torch.Tensor) -> None:
    adaptune.add_adapter(bert, "a")
    randomize(bert, "a")
    twin = copy.deepcopy(bert)
    assert torch.equal(logits(twin, ids), logits(bert, ids))
    adaptune.set_active(twin, None)
    adaptune.delete_adapter(twin, "a")
    assert adaptune.list_adapters(bert) == ["a"]
    assert not torch.equal(logits(twin, ids), logits(bert, ids))
    assert torch.equal(logits(twin, ids), logits(tiny_bert_classifier(), ids))


def test_gradient_checkpointing_gives_same_grads(ids: torch.Tensor) -> None:
    grads = []
    for ckpt in (False, True):
        model = tiny_bert_classifier()
        adaptune.add_adapter(model, "p", AdapterConfig.parallel())
        randomize(model, "p")
        adaptune.train_adapter(model, "p")
        if ckpt:
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.is_gradient_checkpointing
        model.train()
        model(input_ids=ids, labels=torch.tensor([0, 1, 0])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)


def test_transformers_peft_methods_untouched(bert: nn.Module) -> None:
    before = type(bert).add_adapter
    adaptune.add_adapter(bert, "a")
    assert type(bert).add_adapter is before
    assert "add_adapter" not in vars(bert)


@pytest.mark.parametrize("name", ["1abc", "a-b", "a.b", "../x", "", "é"])
def test_bad_names(bert: nn.Module, name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        adaptune.add_adapter(bert, name)


def test_errors_are_clear(bert: nn.Module) -> None:
    adaptune.add_adapter(bert, "a")
    with pytest.raises(ValueError, match="already exists"):
        adaptune.add_adapter(bert, "a")
    with pytest.raises(KeyError, match="unknown adapter"):
        adaptune.set_active(bert, ["zzz"])
    with pytest.raises(ValueError, match="matched no module"):
        adaptune.add_adapter(bert, "b", AdapterConfig(target_modules=["nope"]))
    with pytest.raises(ValueError, match="no transformer blocks"):
        adaptune.add_adapter(nn.Sequential(nn.Linear(2, 2)), "c")


def test_tied_head_is_refused() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=2, vocab_size=50, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg)
    adaptune.add_adapter(model, "a")
    with pytest.raises(ValueError, match="input embeddings"):
        adaptune.train_adapter(model, "a", heads=("lm_head",))


def test_new_adapters_follow_the_model_mode(bert: nn.Module, ids: torch.Tensor) -> None:
    """Adding an adapter (with dropout) to a model in eval mode must not make its outputs random."""
    adaptune.add_adapter(bert, "d", AdapterConfig(dropout=0.5, init="normal"))
    assert not any(m.training for m in bert.modules())
    assert torch.equal(logits(bert, ids), logits(bert, ids))


@pytest.mark.parametrize("preset", ["pfeiffer", "houlsby", "parallel"])
def test_no_autograd_graph_below_the_lowest_adapter(preset: str) -> None:
    """Adapters in the top half only: blocks below them build no graph, so backward stops at the lowest adapter
    (the top-half speed-up in the benchmark rests on this)."""
    model = tiny_bert_classifier(layers=4)
    adaptune.add_adapter(model, "x", getattr(AdapterConfig, preset)(layers="top-half"))
    adaptune.train_adapter(model, "x")
    tracked: dict[int, bool] = {}
    for i, block in enumerate(model.bert.encoder.layer):
        block.register_forward_hook(lambda m, a, out, i=i: tracked.__setitem__(i, out[0].requires_grad))
    model.train()(input_ids=torch.randint(0, 100, (2, 6)), labels=torch.tensor([0, 1])).loss.backward()
    assert tracked == {0: False, 1: False, 2: True, 3: True}
