"""The method plug-in point: a method defined only in this file runs through the whole model API and the native
format, without touching library code; the registry's checks name what is wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import adaptune
from adaptune import AdapterConfig, MethodConfig, Stack
from adaptune.core.contract import METHODS, AdapterModule, Method, config_from_dict, register_method
from adaptune.core.placement import Target

from .helpers import logits, tiny_bert_classifier


@dataclass(frozen=True)
class ToyScaleConfig(MethodConfig):
    """A toy (IA)3-like method: ``h + h * w``, one learned vector per place, ``w`` starting at ``init``."""

    method: ClassVar[str] = "toy_scale"
    init: float = 0.0

    def _validate(self) -> None:
        super()._validate()
        if not -1.0 < self.init < 1.0:
            raise self._bad("init", "a number in (-1, 1)")


class ToyScale(AdapterModule):
    method = "toy_scale"

    def __init__(self, target: Target, config: ToyScaleConfig) -> None:
        super().__init__()
        self.config, self.mode, self.out_width = config, target.mode, target.out_width
        self.w = nn.Parameter(torch.full((target.out_width,), float(config.init)))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, delta_only: bool = False) -> torch.Tensor:
        base = x if residual is None else residual
        delta = (x * self.w).to(base.dtype)  # (..., d)
        return delta if delta_only else base + delta


TOY = Method("toy_scale", ToyScaleConfig, ToyScale, modes=("output",))


@pytest.fixture
def toy() -> Iterator[Method]:
    register_method(TOY)
    yield TOY
    METHODS.pop("toy_scale")


def test_toy_method_goes_through_the_model_api(toy: Method, bert: nn.Module, ids: torch.Tensor) -> None:
    base = logits(bert, ids)
    config = ToyScaleConfig(placement="both", layers="1-3")
    planned = adaptune.plan(bert, config)
    assert planned.adapter_params == [32] * 6  # one width-32 vector at attention and FFN of 3 blocks

    targets = adaptune.add_adapter(bert, "t", config)
    assert targets == planned.targets
    assert all(type(m) is ToyScale for m in adaptune.adapter_modules(bert, "t").values())
    assert adaptune.adapter_config(bert, "t") == config
    assert torch.equal(logits(bert, ids), base), "a new toy adapter (w = 0) must be an exact identity"
    assert adaptune.check_adapters_fire(bert, input_ids=ids) == []

    summary = adaptune.train_adapter(bert, "t")
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    hosts = [f"bert.encoder.layer.{i}.{m}" for i in (1, 2, 3) for m in ("attention.output.dense", "output.dense")]
    assert trainable == {f"{h}.adapters.t.w" for h in hosts} | {"classifier.weight", "classifier.bias"}
    assert summary.trainable == 6 * 32 + 32 * 2 + 2
    opt = torch.optim.SGD([p for p in bert.parameters() if p.requires_grad], lr=0.5)
    bert(input_ids=ids, labels=torch.tensor([0, 1, 1])).loss.backward()
    opt.step()
    assert all(m.w.abs().sum() > 0 for m in adaptune.adapter_modules(bert, "t").values())
    assert not torch.equal(logits(bert, ids), base)

    # Composition reuses the slot for any method: stack the toy with a bottleneck, then fuse the two.
    adaptune.add_adapter(bert, "b", AdapterConfig(placement="both", init="normal"), activate=False)
    adaptune.set_active(bert, Stack("b", "t"))
    assert adaptune.check_adapters_fire(bert, input_ids=ids) == []
    fuse = adaptune.add_fusion(bert, ["t", "b"])
    assert len(adaptune.fusion_modules(bert, fuse.name)) == 8  # every slot holding t or b
    assert torch.isfinite(logits(bert, ids)).all()

    adaptune.set_active(bert, "b")
    adaptune.delete_fusion(bert, fuse.name)
    adaptune.delete_adapter(bert, "t")
    assert adaptune.list_adapters(bert) == ["b"]


def test_toy_method_saves_and_loads(toy: Method, tmp_path: Path, ids: torch.Tensor) -> None:
    model = tiny_bert_classifier()
    adaptune.add_adapter(model, "t", ToyScaleConfig(placement="attention", init=0.25))
    expected = logits(model, ids)
    out = adaptune.save_adapter(model, "t", tmp_path / "t")
    meta = json.loads((out / "adapter_config.json").read_text())
    assert meta["method"] == "toy_scale" and meta["config"]["method"] == "toy_scale"
    assert meta["config"]["init"] == 0.25

    fresh = tiny_bert_classifier()
    assert adaptune.load_adapter(fresh, out) == "t"
    assert adaptune.adapter_config(fresh, "t") == ToyScaleConfig(placement="attention", init=0.25)
    assert torch.equal(logits(fresh, ids), expected)

    METHODS.pop("toy_scale")  # a reader without the method names the file, the field and what it knows
    try:
        needle = r"adapter_config\.json: field 'method' is 'toy_scale'.*known: bottleneck"
        with pytest.raises(ValueError, match=needle):
            adaptune.load_adapter(tiny_bert_classifier(), out)
    finally:
        register_method(TOY)


def test_method_refuses_modes_it_lacks(toy: Method, bert: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"'toy_scale' cannot run at .* mode 'parallel'"):
        adaptune.add_adapter(bert, "t", ToyScaleConfig(placement="parallel"))
    assert adaptune.list_adapters(bert) == []


def test_registry_checks() -> None:
    with pytest.raises(ValueError, match="must agree"):
        register_method(Method("other_name", ToyScaleConfig, ToyScale))
    with pytest.raises(ValueError, match="unknown modes"):
        register_method(Method("toy_scale", ToyScaleConfig, ToyScale, modes=("sideways",)))
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("bottleneck", AdapterConfig, ToyScale))
    assert "toy_scale" not in METHODS


def test_config_from_dict_dispatches_on_method(toy: Method) -> None:
    assert config_from_dict({"method": "toy_scale", "init": 0.5}) == ToyScaleConfig(init=0.5)
    assert config_from_dict({"bottleneck_size": 3}) == AdapterConfig(bottleneck_size=3)  # no method: bottleneck
    with pytest.raises(ValueError, match=r"x\.json: field 'method' is 'nonesuch'.*known: bottleneck, .*toy_scale"):
        config_from_dict({"method": "nonesuch"}, source="x.json")
    with pytest.raises(ValueError, match=r"x\.json: .*ToyScaleConfig.init=2"):
        config_from_dict({"method": "toy_scale", "init": 2}, source="x.json")
    with pytest.raises(ValueError, match="is for 'bottleneck'"):
        AdapterConfig.from_dict({"method": "toy_scale"})
