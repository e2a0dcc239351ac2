"""The grouped form of a PerExample batch (``AdapterModule.grouped``): rows running different plain bottleneck
adapters go through one concatenated down-projection and one batched up-projection per place. It must give what
each row gives alone, and stand aside (the per-group loop runs) wherever it does not apply."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adaptune
from adaptune import AdapterConfig, PerExample
from adaptune.methods.bottleneck import Bottleneck

from .helpers import logits, randomize, tiny_bert_classifier

CONFIGS = {
    "pfeiffer": AdapterConfig.pfeiffer,
    "houlsby": AdapterConfig.houlsby,
    "parallel": AdapterConfig.parallel,
}


def _model(preset: str, n: int = 3) -> torch.nn.Module:
    model = tiny_bert_classifier(seed=1)
    for i in range(n):
        adaptune.add_adapter(model, f"a{i}", CONFIGS[preset](), activate=False)
        randomize(model, f"a{i}", seed=i + 1)
    return model


def _count_grouped(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"used": 0}
    original = Bottleneck.grouped.__func__  # type: ignore[attr-defined]

    def spy(cls: Any, *args: Any) -> Any:
        out = original(cls, *args)
        calls["used"] += out is not None
        return out

    monkeypatch.setattr(Bottleneck, "grouped", classmethod(spy))
    return calls


@pytest.mark.parametrize("preset", list(CONFIGS))
def test_grouped_rows_equal_each_row_alone(preset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(preset)
    ids = torch.randint(5, 100, (5, 9), generator=torch.Generator().manual_seed(0))
    setups = ["a0", "a2", "a1", "a0", "a2"]
    calls = _count_grouped(monkeypatch)
    adaptune.set_active(model, PerExample(setups))
    batched = logits(model, ids)
    assert calls["used"] > 0, "the grouped form did not run"
    for row, name in enumerate(setups):
        adaptune.set_active(model, name)
        torch.testing.assert_close(batched[row : row + 1], logits(model, ids[row : row + 1]), atol=1e-5, rtol=0)


def test_grouped_under_bf16_autocast_matches_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("pfeiffer")
    ids = torch.randint(5, 100, (4, 7), generator=torch.Generator().manual_seed(1))
    adaptune.set_active(model, PerExample(["a0", "a1", "a2", "a1"]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = logits(model, ids).float()
        monkeypatch.setattr(Bottleneck, "grouped", classmethod(lambda cls, *a: None))
        loop = logits(model, ids).float()
    torch.testing.assert_close(fast, loop, atol=2e-2, rtol=0)  # bf16 rounding, different op order


def test_grouped_stands_aside_for_base_rows_compositions_and_training(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("pfeiffer")
    ids = torch.randint(5, 100, (3, 6), generator=torch.Generator().manual_seed(2))
    calls = _count_grouped(monkeypatch)
    for setups in (["a0", None, "a1"], ["a0", adaptune.Stack("a1", "a2"), "a1"]):
        adaptune.set_active(model, PerExample(setups))
        batched = logits(model, ids)
        for row, setup in enumerate(setups):
            adaptune.set_active(model, setup)
            torch.testing.assert_close(batched[row : row + 1], logits(model, ids[row : row + 1]), atol=1e-5, rtol=0)
    assert calls["used"] == 0
    adaptune.set_active(model, PerExample(["a0", "a1", "a2"]))
    model(input_ids=ids).logits.sum().backward()  # with gradients: the per-group loop, so autograd sees each adapter
    assert calls["used"] == 0


def test_grouped_refuses_mixed_sizes() -> None:
    model = tiny_bert_classifier(seed=1)
    adaptune.add_adapter(model, "small", AdapterConfig.pfeiffer(reduction_factor=16))
    adaptune.add_adapter(model, "big", AdapterConfig.pfeiffer(reduction_factor=2))
    randomize(model, "small", 1)
    randomize(model, "big", 2)
    ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(3))
    adaptune.set_active(model, PerExample(["small", "big"]))
    batched = logits(model, ids)
    for row, name in enumerate(("small", "big")):
        adaptune.set_active(model, name)
        torch.testing.assert_close(batched[row : row + 1], logits(model, ids[row : row + 1]), atol=1e-5, rtol=0)


def test_grouped_weights_cache_sees_in_place_updates_and_new_adapters() -> None:
    model = _model("pfeiffer")
    ids = torch.randint(5, 100, (3, 6), generator=torch.Generator().manual_seed(4))
    adaptune.set_active(model, PerExample(["a0", "a1", "a2"]))
    before = logits(model, ids)
    randomize(model, "a1", seed=99)  # in place, as an optimizer step or a load would
    after = logits(model, ids)
    assert not torch.allclose(before[1], after[1])
    torch.testing.assert_close(before[[0, 2]], after[[0, 2]], atol=1e-6, rtol=0)
    adaptune.set_active(model, "a1")
    torch.testing.assert_close(after[1:2], logits(model, ids[1:2]), atol=1e-5, rtol=0)
    adaptune.set_active(model, None)
    adaptune.delete_adapter(model, "a2")
    adaptune.add_adapter(model, "a2", AdapterConfig.pfeiffer(), activate=False)  # same name, new weights
    randomize(model, "a2", seed=7)
    adaptune.set_active(model, PerExample(["a0", "a1", "a2"]))
    fresh = logits(model, ids)
    adaptune.set_active(model, "a2")
    torch.testing.assert_close(fresh[2:3], logits(model, ids[2:3]), atol=1e-5, rtol=0)
