"""The architecture matrix: every placement on tiny models of 37 Transformers architectures (no download).

For each (model type, placement) one test checks the invariants users rely on:
a new adapter is an exact identity, every adapter fires, an optimiser step changes only adapter tensors,
save -> load into a fresh model reproduces outputs exactly, and deleting the adapter restores the base.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adaptune
from adaptune import AdapterConfig

from .tiny_models import MODEL_TYPES, build_model, make_inputs, output_tensors

PLACEMENTS = ("attention", "ffn", "both", "parallel")


def run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.clone() for t in output_tensors(model(**inputs))]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x, y), f"{what}: output {i} differs by {(x - y).abs().max().item():.3g}"


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_matrix(model_type: str, placement: str, tmp_path: Path) -> None:
    model = build_model(model_type, seed=0)
    inputs = make_inputs(model_type)
    base = run(model, inputs)

    config = AdapterConfig(placement=placement, bottleneck_size=4, activation="gelu")
    targets = adaptune.add_adapter(model, "a", config)
    assert targets
    n_blocks = len(adaptune.find_blocks(model))
    per_block = 2 if placement == "both" else 1
    assert len(targets) == n_blocks * per_block
    assert_same(run(model, inputs), base, "zero-init adapter")
    assert adaptune.check_adapters_fire(model, **inputs) == []

    adaptune.train_adapter(model, "a")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = sum(t.float().pow(2).mean() for t in output_tensors(model(**inputs)))
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".adapters.a." in n for n in changed), sorted(
        changed - {n for n in changed if ".adapters.a." in n}
    )
    ups = [n for n in before if n.endswith(".adapters.a.up.weight")]
    assert set(ups) <= changed, f"adapters that got no gradient: {sorted(set(ups) - changed)}"
    adapted = run(model, inputs)
    assert any(not torch.equal(x, y) for x, y in zip(adapted, base, strict=True))

    adaptune.save_adapter(model, "a", tmp_path / "a")
    fresh = build_model(model_type, seed=0)
    adaptune.load_adapter(fresh, tmp_path / "a")
    assert_same(run(fresh, inputs), adapted, "save -> load")

    adaptune.set_active(model, None)  # delete refuses an adapter of the active setup
    adaptune.delete_adapter(model, "a")
    assert_same(run(model, inputs), base, "after delete")


@pytest.mark.parametrize("placement", ["ffn", "parallel"])
def test_squeezebert_conv1d_targets_are_channels_first(placement: str) -> None:
    """SqueezeBERT's projections are 1x1 nn.Conv1d on (B, C, T): adapters sit on them and see (B, T, C)."""
    model = build_model("squeezebert", seed=0)
    inputs = make_inputs("squeezebert")
    config = AdapterConfig(placement=placement, bottleneck_size=4, init="normal", init_std=0.5)
    targets = adaptune.add_adapter(model, "a", config)
    attention = adaptune.find_targets(model, AdapterConfig(placement="attention"))
    assert [t.module for t in attention] == [f"encoder.layers.{i}.post_attention.conv1d" for i in range(2)]
    assert [t.module for t in targets] == [f"encoder.layers.{i}.output.conv1d" for i in range(2)]
    assert all(t.channels_first and t.in_width == t.out_width == 32 for t in targets)

    block = model.get_submodule("encoder.layers.0")
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str) -> object:
        return lambda module, args: seen.__setitem__(key, args[0])

    handles = [
        block.intermediate.conv1d.register_forward_pre_hook(keep("ffn_in")),  # (B, C, T): the FFN input
        block.output.conv1d.register_forward_pre_hook(keep("conv_in")),
        block.output.dropout.register_forward_pre_hook(keep("adapted")),  # the conv output after the adapter
    ]
    try:
        run(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    adapter = adaptune.adapter_modules(model, "a")["encoder.layers.0.output.conv1d.adapters.a"]
    with torch.no_grad():
        adaptune.set_active(model, None)
        raw = block.output.conv1d(seen["conv_in"])  # (B, C, T), the host's own output
        x = seen["ffn_in"] if placement == "parallel" else raw
        expected = adapter(x.transpose(1, 2), residual=raw.transpose(1, 2)).transpose(1, 2)
    assert raw.shape[1] == 32 and not torch.equal(expected, raw)
    torch.testing.assert_close(seen["adapted"], expected, rtol=0, atol=1e-6)
