"""AdapterSlot on its own: channels-first hosts (1x1 ``nn.Conv1d``, as in SqueezeBERT) in each mode, and the
block-type -> handler dispatch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import adaptune
from adaptune import AdapterConfig, Average, Fuse, Parallel, PerExample, Stack
from adaptune.core.contract import AdapterModule
from adaptune.core.slot import AdapterSlot, ForwardState

WIDTH, FFN, T = 8, 16, 5


def trained_adapter(mode: str, seed: int) -> AdapterModule:
    """A non-identity adapter of width ``WIDTH`` in ``mode``, made with the public API on a plain Linear."""
    torch.manual_seed(seed)
    holder = nn.Sequential(nn.Linear(WIDTH, WIDTH))
    cfg = AdapterConfig(target_modules=["0"], init="normal", init_std=0.5, bottleneck_size=3)
    adaptune.add_adapter(holder, "a", cfg)
    adapter = copy.deepcopy(holder[0].adapters["a"])
    adapter.mode = mode  # the slot reads the mode to choose the adapter's input; the math does not depend on it
    return adapter


def conv_ffn() -> nn.Sequential:
    """A channels-first FFN: (B, WIDTH, T) -> (B, FFN, T) -> (B, WIDTH, T) with 1x1 convolutions."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(WIDTH, FFN, 1), nn.ReLU(), nn.Conv1d(FFN, WIDTH, 1)).eval()


def attach(host: nn.Module, adapters: dict[str, AdapterModule], **kw: object) -> AdapterSlot:
    slot = AdapterSlot(host, **kw)  # type: ignore[arg-type]
    for name, adapter in adapters.items():
        slot[name] = adapter
    host.add_module("adapters", slot)
    return slot


def cl(t: torch.Tensor) -> torch.Tensor:
    """(B, C, T) <-> (B, T, C)."""
    return t.transpose(1, 2)


@pytest.mark.parametrize("grad", [False, True])  # no grad: the Bottleneck's inference fast path
def test_channels_first_output_mode(grad: bool) -> None:
    ffn = conv_ffn()
    x = torch.randn(2, WIDTH, T)
    with torch.no_grad():
        h = ffn(x)  # (B, C, T), before any adapter
    a = trained_adapter("output", seed=1)
    slot = attach(ffn[2], {"a": a}, channels_first=True)
    slot.active = "a"
    with torch.set_grad_enabled(grad):
        out = ffn(x)
        expected = cl(a(cl(h)))  # the adapter runs over the channels of every position
    assert out.shape == h.shape
    assert not torch.allclose(out, h)
    torch.testing.assert_close(out, expected)


def test_channels_first_matches_the_same_model_with_linear_projections() -> None:
    ffn = conv_ffn()
    lin = nn.Sequential(nn.Linear(WIDTH, FFN), nn.ReLU(), nn.Linear(FFN, WIDTH)).eval()
    with torch.no_grad():
        for conv, linear in ((ffn[0], lin[0]), (ffn[2], lin[2])):
            linear.weight.copy_(conv.weight[:, :, 0])  # (out, in, 1) -> (out, in)
            linear.bias.copy_(conv.bias)
    a, p = trained_adapter("output", seed=1), trained_adapter("parallel", seed=2)
    attach(ffn[2], {"a": a, "p": p}, input_module=ffn[0], channels_first=True).active = Stack("p", "a")
    attach(lin[2], copy.deepcopy({"a": a, "p": p}), input_module=lin[0]).active = Stack("p", "a")
    x = torch.randn(3, WIDTH, T)
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), cl(lin(cl(x))))


def test_channels_first_parallel_reads_the_ffn_input() -> None:
    ffn = conv_ffn()
    x = torch.randn(2, WIDTH, T)
    with torch.no_grad():
        h = ffn(x)
    p = trained_adapter("parallel", seed=2)
    attach(ffn[2], {"p": p}, input_module=ffn[0], channels_first=True).active = "p"
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), cl(p(cl(x), residual=cl(h))))  # h + s·f(x), channels last inside


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over C of a (B, C, T) tensor (SqueezeBERT's ``SqueezeBertLayerNorm`` does the same)."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return super().forward(v.transpose(1, 2)).transpose(1, 2)


def test_channels_first_post_ln() -> None:
    torch.manual_seed(0)
    norm = ChannelsFirstLayerNorm(WIDTH)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    v = torch.randn(2, WIDTH, T)
    a = trained_adapter("post_ln", seed=3)
    attach(norm, {"a": a}, channels_first=True).active = "a"
    ln = nn.functional.layer_norm
    with torch.no_grad():
        out = norm(v)
        vt = cl(v)  # (B, T, C)
        expected = ln(a(ln(vt, (WIDTH,), norm.weight, norm.bias), residual=vt), (WIDTH,), norm.weight, norm.bias)
    torch.testing.assert_close(out, cl(expected))  # LN(v + s·f(LN(v))), normalised over the channels


def test_channels_first_per_example_rows() -> None:
    ffn = conv_ffn()
    x = torch.randn(3, WIDTH, T)
    with torch.no_grad():
        h = ffn(x)
    a = trained_adapter("output", seed=1)
    slot = attach(ffn[2], {"a": a}, channels_first=True)
    slot.active = PerExample(["a", None, "a"])
    with torch.no_grad():
        out = ffn(x)
        torch.testing.assert_close(out[[0, 2]], cl(a(cl(h[[0, 2]]))))
    torch.testing.assert_close(out[1], h[1])  # None: that example runs without adapters


def test_dispatch_uses_the_handler_table() -> None:
    slot = attach(nn.Linear(WIDTH, WIDTH), {"a": trained_adapter("output", seed=1)})
    h = torch.randn(2, T, WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(slot.apply_setup(None, ForwardState(h)), h)
        torch.testing.assert_close(slot.apply_setup("missing", ForwardState(h)), h)  # not placed here: identity

        class Name(str):
            pass

        # a str subclass finds the adapter handler through its base class
        torch.testing.assert_close(slot.apply_setup(Name("a"), ForwardState(h)), slot["a"](h))
        with pytest.raises(TypeError, match="unknown composition block 3"):
            slot.apply_setup(3, ForwardState(h))  # type: ignore[arg-type]
    assert set(AdapterSlot.HANDLERS) == {str, Stack, Average, Fuse, PerExample, Parallel}  # every block has one
