"""Dropout actually drops: an adapter's own dropout in train mode, and ``set_base_dropout(model, False)`` making the
pretrained body deterministic while the adapter's dropout still drops."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

import adaptune
from adaptune import AdapterConfig

IDS = torch.randint(5, 100, (4, 16), generator=torch.Generator().manual_seed(0))


def _model(base_dropout: float, adapter_dropout: float, layers: tuple[int, ...] | None = None) -> nn.Module:
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "bert",
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=base_dropout,
        attention_probs_dropout_prob=base_dropout,
    )
    model = AutoModelForSequenceClassification.from_config(cfg)
    config = AdapterConfig.pfeiffer(
        reduction_factor=2, init="normal", init_std=0.5, dropout=adapter_dropout, layers=layers
    )
    adaptune.add_adapter(model, "a", config)
    return model


def _hidden(model: nn.Module) -> tuple[torch.Tensor, ...]:
    return model.bert(input_ids=IDS, output_hidden_states=True).hidden_states


def _drop_counts(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of every adapter Dropout call during one forward."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    drops = [m.drop for m in adaptune.adapter_modules(model, "a").values()]
    handles = [d.register_forward_hook(lambda m, a, out: seen.append((a[0].detach(), out.detach()))) for d in drops]
    with torch.no_grad():
        _hidden(model)
    for h in handles:
        h.remove()
    return seen


def test_adapter_dropout_drops_in_train_mode_only() -> None:
    model = _model(base_dropout=0.0, adapter_dropout=0.5)  # the only randomness is the adapter's
    model.train()
    with torch.no_grad():
        assert not torch.equal(_hidden(model)[-1], _hidden(model)[-1])
    seen = _drop_counts(model)
    assert len(seen) == 2  # one adapter per block
    x = torch.cat([i.flatten() for i, _ in seen])
    y = torch.cat([o.flatten() for _, o in seen])
    live = x != 0  # relu zeros are not dropout's doing
    kept = (y != 0) & live
    frac_dropped = 1 - kept.sum() / live.sum()
    assert 0.4 < float(frac_dropped) < 0.6, frac_dropped  # p = 0.5 over ~1000 activations
    assert torch.allclose(y[kept], 2 * x[kept])  # survivors scaled by 1 / (1 - p)
    model.eval()
    with torch.no_grad():
        assert torch.equal(_hidden(model)[-1], _hidden(model)[-1])
    assert all(torch.equal(i, o) for i, o in _drop_counts(model))


def test_base_dropout_off_leaves_only_the_adapters_dropout() -> None:
    # adapter on block 1 only: block 0's output is pure base computation
    model = _model(base_dropout=0.3, adapter_dropout=0.5, layers=(1,))
    model.eval()
    with torch.no_grad():
        eval_block0 = _hidden(model)[1]
    model.train()
    with torch.no_grad():
        assert not torch.equal(_hidden(model)[1], _hidden(model)[1])  # base dropout on by default
    assert adaptune.set_base_dropout(model, False) > 0
    model.train()  # as HF's Trainer does every step
    with torch.no_grad():
        first, second = _hidden(model), _hidden(model)
    assert torch.equal(first[1], second[1])  # the base is deterministic in train mode...
    assert torch.equal(first[1], eval_block0)  # ...and computes what it computes at inference
    assert not torch.equal(first[-1], second[-1])  # while the adapter on block 1 still drops
    ((x, y),) = _drop_counts(model)
    live = x != 0
    assert 0.3 < float(1 - ((y != 0) & live).sum() / live.sum()) < 0.7
