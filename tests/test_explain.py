"""training.explain.collect: its numbers, recomputed by hand on a tiny BERT with hand-set adapter weights."""

from __future__ import annotations

import math

import torch
from torch import nn

import adaptune
from adaptune import AdapterConfig
from adaptune.training.explain import collect

from .helpers import randomize, tiny_bert_classifier

IDS = torch.randint(5, 100, (3, 7), generator=torch.Generator().manual_seed(2))
MASK = torch.tensor([[1] * 7, [1] * 7, [1, 1, 1, 1, 0, 0, 0]])  # row 2 padded: its last 3 tokens must not count
LABELS = ["pos", "neg", "pos"]
BATCHES = [({"input_ids": IDS, "attention_mask": MASK}, LABELS)]


def _gated_model() -> tuple[nn.Module, str]:
    """One gated adapter (scaling 2) on block 1's FFN output, random weights, gate fixed at sigmoid(0.7)."""
    model = tiny_bert_classifier(layers=2)
    config = AdapterConfig(placement="ffn", layers=(1,), reduction_factor=4, scaling=2.0, gate=True)
    (target,) = adaptune.add_adapter(model, "a", config)
    randomize(model, "a", seed=3)
    (module,) = adaptune.adapter_modules(model, "a").values()
    with torch.no_grad():
        module.gate.weight.zero_()
        module.gate.bias.fill_(0.7)
    return model, target.module


def test_contribution_and_gate_equal_a_manual_computation() -> None:
    model, host = _gated_model()
    (module,) = adaptune.adapter_modules(model, "a").values()
    # h = what the adapter reads: the host's output. Only block 1 is adapted, after its FFN dense, so h is the same
    # with the adapter on or off; capture it with the adapter off.
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(host).register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    adaptune.set_active(model, None)
    with torch.no_grad():
        model(input_ids=IDS, attention_mask=MASK)
    handle.remove()
    adaptune.set_active(model, "a")
    h = seen[0]  # (B, T, d)
    gate = 1 / (1 + math.exp(-0.7))
    down, up = module.down, module.up
    delta = 2.0 * (torch.relu(h @ down.weight.T + down.bias) @ up.weight.T + up.bias) * gate  # s·f(h)·gate
    ratio = delta.norm(dim=-1) / h.norm(dim=-1)  # (B, T)
    expected = ratio[MASK.bool()].mean()

    stats = collect(model, BATCHES)
    assert set(stats["contribution"]) == {(1, "a")}
    assert torch.allclose(stats["contribution"][(1, "a")], expected, rtol=1e-5, atol=0)
    unmasked = ratio.mean()
    assert not torch.allclose(unmasked, expected, rtol=1e-3)  # so the padding mask demonstrably matters
    assert set(stats["gate"]) == {(1, "a")}
    assert abs(float(stats["gate"][(1, "a")]) - gate) < 1e-6
    assert stats["fusion"] == {}


def _fused_model() -> tuple[nn.Module, adaptune.Fuse]:
    model = tiny_bert_classifier(layers=2)
    for i, name in enumerate(("x", "y")):
        adaptune.add_adapter(model, name, AdapterConfig.pfeiffer(reduction_factor=4))
        randomize(model, name, seed=20 + i)
    fuse = adaptune.add_fusion(model, ["x", "y"])
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for layer in adaptune.fusion_modules(model, fuse.name).values():
            for p in (layer.query.weight, layer.query.bias, layer.key.weight, layer.key.bias):
                p.copy_(torch.randn(p.shape, generator=g))
    return model, fuse


def test_fusion_attention_rows_sum_to_one_and_classes_recombine() -> None:
    model, _ = _fused_model()
    stats = collect(model, BATCHES)["fusion"]
    assert {k[1] for k in stats} == {"all", "pos", "neg"} and {k[0] for k in stats} == {0, 1}
    for key, probs in stats.items():
        assert probs.shape == (2,)
        assert abs(float(probs.sum()) - 1.0) < 1e-6, key
        assert bool((probs > 0).all() and (probs < 1).all())
    # the overall mean is the token-weighted mean of the per-class means ("pos": rows 0 and 2, 7 + 4 tokens)
    for layer in (0, 1):
        recombined = (stats[(layer, "pos")] * 11 + stats[(layer, "neg")] * 7) / 18
        assert torch.allclose(stats[(layer, "all")], recombined, atol=1e-6)
    assert not torch.allclose(stats[(0, "all")], torch.tensor([0.5, 0.5]), atol=1e-3)  # weights are not trivial


def test_fusion_attention_is_uniform_when_query_and_key_are_zero() -> None:
    model, fuse = _fused_model()
    with torch.no_grad():
        for layer in adaptune.fusion_modules(model, fuse.name).values():
            for p in (layer.query.weight, layer.query.bias, layer.key.weight, layer.key.bias):
                p.zero_()  # every score q·k_i = 0: softmax gives 1/n to each adapter
    stats = collect(model, BATCHES)["fusion"]
    for probs in stats.values():
        assert torch.equal(probs, torch.tensor([0.5, 0.5]))


def test_collect_leaves_no_hooks_and_keeps_outputs() -> None:
    model, _ = _fused_model()
    with torch.no_grad():
        before = model(input_ids=IDS, attention_mask=MASK).logits
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    collect(model, BATCHES)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS, attention_mask=MASK).logits, before)
