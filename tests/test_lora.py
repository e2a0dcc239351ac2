"""LoRA: exact math at a hooked linear (the slot feeds the projection's own input; GPT-2's Conv1D too), merge /
unmerge rules, config errors, composition with other methods and ``average_adapters``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adaptune
from adaptune import AdapterConfig, IA3Config, LoraConfig, PerExample, Stack
from adaptune.methods.lora import Lora

from .helpers import logits, randomize, tiny_bert_classifier
from .tiny_models import build_model, make_inputs


def _capture(module: nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0])),
        module.register_forward_hook(lambda m, args, out: seen.__setitem__("y", out)),  # runs after the slot's hook
    ]
    return seen, handles


@pytest.mark.parametrize(
    ("model_type", "host"), [("bert", "encoder.layer.0.attention.self.query"), ("gpt2", "h.0.attn.c_attn")]
)
def test_update_is_w_x_plus_scaled_b_a_x(model_type: str, host: str) -> None:
    model = build_model(model_type)
    adaptune.add_adapter(model, "a", LoraConfig(rank=3, alpha=6))
    randomize(model, "a")
    module = model.get_submodule(host)
    lora = module.adapters["a"]
    assert isinstance(lora, Lora) and lora.scaling == 2.0
    seen, handles = _capture(module)
    try:
        model(**make_inputs(model_type))
    finally:
        for h in handles:
            h.remove()
    x = seen["x"]  # the projection's own input, (B, T, d)
    with torch.no_grad():
        base = module.forward(x)  # forward, not __call__: without the slot's hooks
        expected = base + 2.0 * (x @ lora.A.T @ lora.B.T)
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-6)


def test_only_lora_parameters_train(bert: nn.Module, ids: torch.Tensor) -> None:
    adaptune.add_adapter(bert, "a", LoraConfig(targets="attention", layers="0"))
    adaptune.train_adapter(bert, "a", heads=())
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    hosts = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
    assert trainable == {f"bert.encoder.layer.0.{h}.adapters.a.{p}" for h in hosts for p in ("A", "B")}


def test_merge_rules(bert: nn.Module, ids: torch.Tensor) -> None:
    adaptune.add_adapter(bert, "a", LoraConfig())
    adaptune.add_adapter(bert, "b", LoraConfig(), activate=False)
    randomize(bert, "a")
    adaptune.set_active(bert, PerExample(["a", None, "a"]))
    with pytest.raises(ValueError, match="only be merged while the setup uses it alone or in a Stack"):
        adaptune.merge_adapter(bert, "a")
    adaptune.set_active(bert, "a")
    adapted = logits(bert, ids)
    adaptune.merge_adapter(bert, "a")
    torch.testing.assert_close(logits(bert, ids), adapted, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="already merged"):
        adaptune.merge_adapter(bert, "a")
    with pytest.raises(ValueError, match="'a' is already merged into the same module"):
        adaptune.merge_adapter(bert, "b")
    adaptune.set_active(bert, None)
    with pytest.raises(ValueError, match="merged into the base weights; unmerge it"):
        adaptune.delete_adapter(bert, "a")
    adaptune.unmerge_adapter(bert, "a")
    with pytest.raises(ValueError, match="is not merged"):
        adaptune.unmerge_adapter(bert, "a")
    adaptune.add_adapter(bert, "bn", AdapterConfig())
    with pytest.raises(TypeError, match=r"'bn' \(bottleneck\) cannot be merged"):
        adaptune.merge_adapter(bert, "bn")


def test_reduced_precision_merge_is_refused_unless_allowed(ids: torch.Tensor) -> None:
    model = tiny_bert_classifier().to(torch.bfloat16)
    adaptune.add_adapter(model, "a", LoraConfig())
    randomize(model, "a")
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"base weights are torch\.bfloat16: W \+ ΔW rounded"):
        adaptune.merge_adapter(model, "a")
    adaptune.merge_adapter(model, "a", allow_reduced_precision=True)
    adaptune.unmerge_adapter(model, "a")
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"LoraConfig\.rank=0: expected an integer >= 1"):
        LoraConfig(rank=0)
    with pytest.raises(ValueError, match=r"LoraConfig\.targets='mlp': expected one of"):
        LoraConfig(targets="mlp")
    with pytest.raises(ValueError, match=r"LoraConfig\.dropout=1\.0"):
        LoraConfig(dropout=1.0)
    config = LoraConfig(rank=4, alpha=16, targets="ffn", layers="last:2")
    assert adaptune.core.contract.config_from_dict(config.to_dict()) == config


def test_stack_and_per_example_across_methods(bert: nn.Module, ids: torch.Tensor) -> None:
    adaptune.add_adapter(bert, "lo", LoraConfig(targets="all"))
    adaptune.add_adapter(bert, "ia", IA3Config(), activate=False)
    adaptune.add_adapter(bert, "bn", AdapterConfig(init="normal"), activate=False)
    for name in ("lo", "ia", "bn"):
        randomize(bert, name, seed=len(name))
    alone = {}
    for setup in ("lo", "ia", "bn", None):
        adaptune.set_active(bert, setup)
        alone[setup] = logits(bert, ids)
    adaptune.set_active(bert, PerExample(["lo", "ia", None]))  # each row exactly as if run alone
    mixed = logits(bert, ids)
    for row, setup in enumerate(("lo", "ia", None)):
        torch.testing.assert_close(mixed[row], alone[setup][row], rtol=0, atol=1e-6)
    adaptune.set_active(bert, Stack("lo", "ia", "bn"))
    assert adaptune.check_adapters_fire(bert, input_ids=ids) == []
    stacked = logits(bert, ids)
    assert all(not torch.allclose(stacked, alone[s]) for s in ("lo", "ia", "bn"))
    adaptune.merge_adapter(bert, "lo")  # merging the LoRA of a Stack keeps the Stack's outputs
    torch.testing.assert_close(logits(bert, ids), stacked, rtol=0, atol=1e-5)
    adaptune.unmerge_adapter(bert, "lo")


def test_average_adapters_averages_lora_weights(bert: nn.Module) -> None:
    """LoRA weights average like any adapter's: A and B separately (AdapterHub's "linear" combination), so the
    average's update is (ΣwB)(ΣwA), not ΣwBA; same config and places required."""
    adaptune.add_adapter(bert, "a", LoraConfig(rank=2))
    adaptune.add_adapter(bert, "b", LoraConfig(rank=2), activate=False)
    randomize(bert, "a", seed=1)
    randomize(bert, "b", seed=2)
    adaptune.average_adapters(bert, ["a", "b"], "avg", weights=[3, 1])
    for path, module in adaptune.adapter_modules(bert, "avg").items():
        a, b = (adaptune.adapter_modules(bert, n)[path[: -len("avg")] + n] for n in ("a", "b"))
        torch.testing.assert_close(module.B, 0.75 * a.B + 0.25 * b.B)
        torch.testing.assert_close(module.A, 0.75 * a.A + 0.25 * b.A)
    adaptune.add_adapter(bert, "r4", LoraConfig(rank=4), activate=False)
    with pytest.raises(ValueError, match="differ in method, shape or placement"):
        adaptune.average_adapters(bert, ["a", "r4"], "bad")
