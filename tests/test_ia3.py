"""(IA)³: exact math (keys / values rescaled at their projections' outputs, the FFN intermediate at the input of
the FFN output projection through the slot's input mode), explicit targets, composition rules and averaging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adaptune
from adaptune import AdapterConfig, Average, Fuse, IA3Config, LoraConfig

from .helpers import logits, randomize
from .tiny_models import build_model, make_inputs


def test_places_and_modes(bert: nn.Module) -> None:
    targets = adaptune.add_adapter(bert, "a", IA3Config(layers="0"))
    assert [(t.module.removeprefix("bert.encoder.layer.0."), t.mode, t.out_width) for t in targets] == [
        ("attention.self.key", "output", 32),
        ("attention.self.value", "output", 32),
        ("output.dense", "input", 64),  # the FFN intermediate activation: (B, T, 64)
    ]


def test_scaling_math_on_llama() -> None:
    model = build_model("llama")
    adaptune.add_adapter(model, "a", IA3Config(layers="0"))
    randomize(model, "a")
    mlp, attn = model.get_submodule("layers.0.mlp"), model.get_submodule("layers.0.self_attn")
    seen: dict[str, torch.Tensor] = {}
    handles = [
        mlp.act_fn.register_forward_hook(lambda m, a, out: seen.__setitem__("gate", out)),
        mlp.up_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("up", out)),
        mlp.down_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("down", out)),
        attn.v_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0])),
        attn.v_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("v", out)),
    ]
    try:
        model(**make_inputs("llama"))
    finally:
        for h in handles:
            h.remove()
    l_ff = mlp.down_proj.adapters["a"].vector
    l_v = attn.v_proj.adapters["a"].vector
    with torch.no_grad():
        expected_down = mlp.down_proj.forward(l_ff * (seen["gate"] * seen["up"]))  # W (l ⊙ a)
        expected_v = l_v * attn.v_proj.forward(seen["x"])  # l ⊙ (W x)
    torch.testing.assert_close(seen["down"], expected_down, rtol=0, atol=1e-6)
    torch.testing.assert_close(seen["v"], expected_v, rtol=0, atol=1e-6)
    assert l_v.shape == (16,)  # GQA: the value projection writes 2 heads x 8


def test_explicit_targets_with_feedforward_modules(bert: nn.Module) -> None:
    config = IA3Config(
        target_modules=(r"bert\..*layer\.1\.attention\.self\.key", ".intermediate.dense"),
        feedforward_modules=".intermediate.dense",
    )
    targets = adaptune.add_adapter(bert, "a", config)
    got = [(t.module.split("layer.")[1], t.mode, t.out_width) for t in targets]
    assert got[:3] == [
        ("0.intermediate.dense", "input", 32),  # its input is the hidden state (B, T, 32)
        ("1.attention.self.key", "output", 32),
        ("1.intermediate.dense", "input", 32),
    ]
    assert len(got) == 5  # the intermediate.dense of the 4 blocks and one key
    assert IA3Config.from_dict(config.to_dict()) == config


def test_composition_rules(bert: nn.Module, ids: torch.Tensor) -> None:
    adaptune.add_adapter(bert, "ia", IA3Config())
    adaptune.add_adapter(bert, "ib", IA3Config(), activate=False)
    adaptune.add_adapter(bert, "bn", AdapterConfig(init="normal"), activate=False)
    randomize(bert, "ia", seed=1)
    randomize(bert, "ib", seed=2)
    # An average of (IA)³ adapters at the same places is the (IA)³ of the averaged vectors (linear in l).
    adaptune.set_active(bert, Average("ia", "ib", weights=(3, 1)))
    averaged = logits(bert, ids)
    adaptune.average_adapters(bert, ["ia", "ib"], "avg", weights=[3, 1])
    adaptune.set_active(bert, "avg")
    torch.testing.assert_close(logits(bert, ids), averaged, rtol=0, atol=1e-5)
    # Averaging an input-scaling adapter with an output adapter at one module is refused with the rule.
    adaptune.set_active(bert, Average("ia", "bn"))
    with pytest.raises(ValueError, match="every adapter there acts on the same side of the module"):
        logits(bert, ids)
    fuse = adaptune.add_fusion(bert, ["ia", "bn"])
    with pytest.raises(ValueError, match="input-mode adapters cannot fuse"):
        logits(bert, ids)
    adaptune.set_active(bert, None)
    adaptune.delete_fusion(bert, fuse.name)


def test_lora_and_ia3_share_a_projection(bert: nn.Module, ids: torch.Tensor) -> None:
    """LoRA and (IA)³ both on the value projection: Stack order is the order of the maths."""
    adaptune.add_adapter(bert, "lo", LoraConfig(targets="qv", layers="0"))
    adaptune.add_adapter(bert, "ia", IA3Config(targets="kv", layers="0"), activate=False)
    randomize(bert, "lo", seed=3)
    randomize(bert, "ia", seed=4)
    value = bert.get_submodule("bert.encoder.layer.0.attention.self.value")
    x = torch.randn(2, 5, 32)
    lo, ia = value.adapters["lo"], value.adapters["ia"]
    with torch.no_grad():
        plain = value.forward(x)
        lora_delta = lo(x, residual=plain, delta_only=True)
        for setup, expected in (
            (adaptune.Stack("lo", "ia"), ia.vector * (plain + lora_delta)),
            (adaptune.Stack("ia", "lo"), ia.vector * plain + lora_delta),
        ):
            adaptune.set_active(bert, setup)
            torch.testing.assert_close(value(x), expected, rtol=0, atol=1e-6)


def test_fuse_of_output_only_ia3_runs(bert: nn.Module, ids: torch.Tensor) -> None:
    adaptune.add_adapter(bert, "ka", IA3Config(targets="kv"))
    adaptune.add_adapter(bert, "kb", IA3Config(targets="kv"), activate=False)
    randomize(bert, "ka", seed=5)
    fuse = adaptune.add_fusion(bert, ["ka", "kb"])  # output-mode (IA)³ deltas fuse like any adapter's
    assert fuse == Fuse("ka", "kb") and adaptune.check_adapters_fire(bert, input_ids=ids) == []
    assert torch.isfinite(logits(bert, ids)).all()
