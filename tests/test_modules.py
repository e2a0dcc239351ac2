"""Bottleneck: exact math, identity init, dtype handling."""

from __future__ import annotations

import pytest
import torch

from adaptune import AdapterConfig, Bottleneck


def test_identity_init_is_exact_noop() -> None:
    b = Bottleneck(16, AdapterConfig())
    x = torch.randn(2, 3, 16)
    assert torch.equal(b(x), x)
    assert b.size == 1  # 16 // 16


@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_new", "silu", "tanh", "identity"])
def test_forward_matches_formula(act: str) -> None:
    cfg = AdapterConfig(activation=act, init="normal", init_std=0.3, scaling=2.5, bottleneck_size=4)
    b = Bottleneck(8, cfg)
    x = torch.randn(5, 8)
    fn = {
        "relu": torch.relu,
        "gelu": torch.nn.functional.gelu,
        "gelu_new": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
        "silu": torch.nn.functional.silu,
        "tanh": torch.tanh,
        "identity": lambda z: z,
    }[act]
    expected = x + 2.5 * (fn(x @ b.down.weight.T + b.down.bias) @ b.up.weight.T + b.up.bias)
    torch.testing.assert_close(b(x), expected)
    residual = torch.randn(5, 8)
    torch.testing.assert_close(b(x, residual=residual), residual + (expected - x))


def test_layer_norms_and_learned_scaling() -> None:
    cfg = AdapterConfig(layer_norm_before=True, layer_norm_after=True, learn_scaling=True, scaling=0.5, init="bert")
    b = Bottleneck(32, cfg)
    assert isinstance(b.scale, torch.nn.Parameter)
    x = torch.randn(4, 32)
    branch = b.norm_after(b.up(torch.relu(b.down(b.norm_before(x)))) * 0.5)
    torch.testing.assert_close(b(x), x + branch)
    b(x).sum().backward()
    assert b.scale.grad is not None


def test_branch_runs_in_adapter_dtype_and_casts_back() -> None:
    b = Bottleneck(8, AdapterConfig(init="normal"))
    x = torch.randn(2, 8, dtype=torch.float64)
    y = b(x)
    assert y.dtype == torch.float64
    assert b.branch(x).dtype == torch.float32


def test_dropout_only_in_training() -> None:
    b = Bottleneck(64, AdapterConfig(init="normal", dropout=0.5, bottleneck_size=32)).eval()
    x = torch.randn(3, 64)
    torch.testing.assert_close(b(x), b(x))
