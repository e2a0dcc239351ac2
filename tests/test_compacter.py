"""Compacter / Compacter++: exact PHM math, the paper's parameter count, the shared rule, save / load, CLI config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptune
from adaptune import CompacterConfig
from adaptune.methods.compacter import Compacter, PHMLinear, phm_weight

from .tiny_models import build_model, make_inputs, output_tensors


def run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.clone() for t in output_tensors(model(**inputs))]


def randomise(model: torch.nn.Module, name: str, seed: int = 1) -> None:
    """Non-trivial weights in every tensor of adapter ``name`` (a new one is an identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in adaptune.adapter_modules(model, name).values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("factorized", [True, False])
def test_phm_weight_is_the_kronecker_sum(factorized: bool) -> None:
    """H = Σ_i A_i ⊗ (s_i t_iᵀ) against torch.kron, and y = x H + b, in float64."""
    config = CompacterConfig(phm_dim=4, phm_rank=2, factorized_phm_W=factorized)
    layer = PHMLinear(16, 8, config).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    rule = torch.randn(4, 4, 4, generator=gen, dtype=torch.float64)
    fast = [layer.W_left[i] @ layer.W_right[i] for i in range(4)] if factorized else list(layer.W)
    explicit = sum(torch.kron(rule[i], fast[i]) for i in range(4))  # (16, 8)
    assert torch.allclose(phm_weight(rule, layer.fast_weight()), explicit, rtol=0, atol=1e-12)
    x = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64)
    assert torch.allclose(layer(x, rule), x @ explicit + layer.b, rtol=0, atol=1e-12)


def paper_count(n: int, r: int, places: list[tuple[int, int]], bias: bool = True) -> int:
    """Karimi Mahabadi et al. 2021, §3: n³ shared rule weights once, plus per PHM layer d→k the rank-r fast weights
    Σ_i (|s_i| + |t_i|) = n·r·(d/n + k/n) and the bias k."""
    total = n**3
    for d, k in places:
        total += n * r * (d // n + k // n) + (k if bias else 0)
    return total


def test_parameter_count_is_the_papers_formula() -> None:
    model = build_model("bert")
    config = CompacterConfig(phm_dim=4, phm_rank=1, reduction_factor=4)  # d = 32, m = 8
    p = adaptune.plan(model, config)
    assert len(p.targets) == 4  # 2 blocks x (attention, FFN)
    layers = [(32, 8), (8, 32)] * len(p.targets)
    assert p.total_adapter_params == paper_count(4, 1, layers) == 64 + 4 * (4 * (8 + 2) + 8 + 4 * (2 + 8) + 32)
    adaptune.add_adapter(model, "a", config)
    counted = {id(t): t.numel() for m in adaptune.adapter_modules(model, "a").values() for t in m.parameters()}
    assert sum(counted.values()) == p.total_adapter_params
    plus = adaptune.plan(build_model("bert"), CompacterConfig.plus_plus(phm_dim=4, phm_rank=1, reduction_factor=4))
    assert plus.total_adapter_params == paper_count(4, 1, [(32, 8), (8, 32)] * 2)
    own_rules = CompacterConfig(phm_dim=4, reduction_factor=4, shared_phm_rule=False)
    assert adaptune.plan(build_model("bert"), own_rules).total_adapter_params == p.total_adapter_params + 3 * 64


def test_shared_rule_is_one_tensor(tmp_path: Path) -> None:
    model = build_model("bert")
    adaptune.add_adapter(model, "a", CompacterConfig())
    modules = list(adaptune.adapter_modules(model, "a").values())
    assert all(isinstance(m, Compacter) for m in modules)
    assert all(m.rule() is modules[0].phm_rule for m in modules)
    assert [("phm_rule" in m.state_dict()) for m in modules] == [True] + [False] * (len(modules) - 1)
    rules = [p for p in model.parameters() if p.shape == (4, 4, 4)]
    assert len(rules) == 1  # optimisers and counts see it once
    # every place's gradient lands in the one tensor
    randomise(model, "a")
    adaptune.train_adapter(model, "a")
    inputs = make_inputs("bert")
    sum(t.float().pow(2).mean() for t in output_tensors(model(**inputs))).backward()
    assert rules[0].grad is not None and rules[0].grad.abs().sum() > 0
    adaptune.save_adapter(model, "a", tmp_path / "a")
    saved = load_file(str(tmp_path / "a" / "adapter.safetensors"))
    assert sum(k.endswith("phm_rule") for k in saved) == 1


def test_own_rules_per_layer() -> None:
    model = build_model("bert")
    adaptune.add_adapter(model, "a", CompacterConfig(shared_phm_rule=False))
    modules = list(adaptune.adapter_modules(model, "a").values())
    assert len({id(m.rule()) for m in modules}) == len(modules)


@pytest.mark.parametrize(
    "config", [CompacterConfig(), CompacterConfig.plus_plus(factorized_phm_W=False, phm_bias=False)]
)
def test_identity_save_load_delete(config: CompacterConfig, tmp_path: Path) -> None:
    model = build_model("gpt2")
    inputs = make_inputs("gpt2")
    base = run(model, inputs)
    weights = {n: p.detach().clone() for n, p in model.state_dict().items()}
    adaptune.add_adapter(model, "a", config)
    assert all(torch.equal(x, y) for x, y in zip(run(model, inputs), base, strict=True)), "identity at init"
    randomise(model, "a")
    adapted = run(model, inputs)
    assert any(not torch.equal(x, y) for x, y in zip(adapted, base, strict=True))
    adaptune.save_adapter(model, "a", tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["config"]["method"] == "compacter"
    fresh = build_model("gpt2")
    adaptune.load_adapter(fresh, tmp_path / "a")
    assert all(torch.equal(x, y) for x, y in zip(run(fresh, inputs), adapted, strict=True)), "save -> load"
    shared = [m.rule() for m in adaptune.adapter_modules(fresh, "a").values()]
    assert len({id(t) for t in shared}) == (1 if config.shared_phm_rule else len(shared))
    adaptune.set_active(model, None)
    adaptune.delete_adapter(model, "a")
    assert all(torch.equal(p, weights[n]) for n, p in model.state_dict().items())
    assert all(torch.equal(x, y) for x, y in zip(run(model, inputs), base, strict=True))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="phm_dim"):
        CompacterConfig(phm_dim=0)
    with pytest.raises(ValueError, match="shared_phm_rule"):
        CompacterConfig(shared_phm_rule="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="phm_dim=5"):
        adaptune.add_adapter(build_model("bert"), "a", CompacterConfig(phm_dim=5))


def test_cli_builds_compacter() -> None:
    import argparse

    from adaptune.cli.common import adapter_config_from_args, add_adapter_options

    p = argparse.ArgumentParser()
    add_adapter_options(p)
    argv = ["--method", "compacter", "--compacter-phm-dim", "2", "--compacter-shared-phm-rule", "false"]
    config = adapter_config_from_args(p.parse_args([*argv, "--placement", "ffn"]))
    assert config == CompacterConfig(phm_dim=2, shared_phm_rule=False, placement="ffn")
    with pytest.raises(ValueError, match="--placement"):
        adapter_config_from_args(p.parse_args(["--method", "lora", "--placement", "ffn"]))
