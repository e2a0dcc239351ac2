"""Bottleneck: exact math, identity init, dtype handling."""

from __future__ import annotations

import pytest
import torch

from adaptune import AdapterConfig, Bottleneck, Fusion


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


@pytest.mark.parametrize("static", [False, True])
def test_fusion_matches_the_paper_formula_and_its_gradients(static: bool) -> None:
    """Fusion computes q·k_i and Σ p_i v_i in a cheaper order; outputs and every gradient must match the
    direct formula (k_i = W_k u_i + b_k, v_i = W_v u_i, p = softmax(q·k / T), h' = h + Σ p_i v_i)."""
    torch.manual_seed(0)
    f = Fusion(8, temperature=2.0, static=static)
    with torch.no_grad():
        for p in f.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # away from the identity / zero init
    h = torch.randn(2, 5, 8, requires_grad=True)
    u = torch.randn(2, 5, 3, 8, requires_grad=True)

    def direct() -> tuple[torch.Tensor, torch.Tensor]:
        q = h @ f.query.weight.T + f.query.bias
        k = u @ f.key.weight.T + f.key.bias
        p = ((k * q.unsqueeze(-2)).sum(-1) / 2.0).softmax(-1)
        v = u if f.value is None else u @ f.value.weight.T
        return h + (p.unsqueeze(-1) * v).sum(-2), p

    ours, p_ours = f(h, u)
    ref, p_ref = direct()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p_ours, p_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ours)
    wrt = [h, u, *f.parameters()]
    grads_ours = torch.autograd.grad((ours * g).sum(), wrt)  # raises if a parameter (b_k) fell out of the graph
    grads_ref = torch.autograd.grad((direct()[0] * g).sum(), wrt)
    for a, b in zip(grads_ours, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fusion_inference_fold_matches_and_follows_weight_changes() -> None:
    """Under no_grad W_q and W_k are folded into one cached matrix; it must match the training path and be
    recomputed after an in-place update (optimizer step) or a tensor swap (load)."""
    torch.manual_seed(0)
    f = Fusion(8)
    h, u = torch.randn(4, 8), torch.randn(4, 3, 8)
    with torch.no_grad():
        f.query.weight.normal_()
        folded, p_folded = f(h, u)
    direct, p_direct = f(h, u)
    torch.testing.assert_close(folded, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p_folded, p_direct, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        f.key.weight.mul_(3.0)  # in place, as AdamW does
        after = f(h, u)[1]
    torch.testing.assert_close(after, f(h, u)[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, p_folded)
    f.query.weight = torch.nn.Parameter(torch.randn(8, 8))  # a new tensor, as a load may do
    with torch.no_grad():
        swapped = f(h, u)[1]
    torch.testing.assert_close(swapped, f(h, u)[1], rtol=1e-5, atol=1e-5)
    assert "_fold" not in f.state_dict() and not any("fold" in k for k in f.state_dict())


@pytest.mark.parametrize("scaling", [1.0, 2.5])
def test_inference_fast_path_matches_the_formula(scaling: float) -> None:
    torch.manual_seed(0)
    b = Bottleneck(8, AdapterConfig(init="normal", init_std=0.3, scaling=scaling, bottleneck_size=4)).eval()
    x, r = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    with torch.no_grad():
        fast = b(x, residual=r)
    torch.testing.assert_close(fast, r + b.branch(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast, b(x, residual=r).detach(), rtol=1e-6, atol=1e-6)  # the autograd path
