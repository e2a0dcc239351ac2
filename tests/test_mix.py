"""Mixes of methods as one adapter (``methods.mix``): MAM and UniPELT-like mixes equal a Stack of their members
with the same weights; save -> load exact; only the mix trains; delete restores the base; generate with and
without a cache; bad mixes are refused with the rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import adaptune
from adaptune import AdapterConfig, CompacterConfig, LoraConfig, MixConfig, PrefixConfig, Stack
from adaptune.cli import main
from adaptune.core.contract import config_from_dict

from .cli_fixtures import make_model_dir
from .helpers import tiny_bert_classifier
from .tiny_models import tiny_config


def randomise(model: torch.nn.Module, name: str, seed: int = 0) -> None:
    """Non-zero values in every tensor of adapter ``name`` (LoRA's B starts at zero: it would test nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in adaptune.adapter_modules(model, name).values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def host(path: str) -> str:
    """``<host>.adapters.<name>`` (``adapters.<name>`` at the model root) -> the host part."""
    return path[: path.rindex("adapters.")]


def members_as_adapters(model: torch.nn.Module, mix: str, config: MixConfig) -> Stack:
    """Add each member of ``mix`` as its own adapter ``m<i>`` holding the mix's weights; their Stack."""
    mixed = {host(path): m for path, m in adaptune.adapter_modules(model, mix).items()}
    names = []
    for i, part in enumerate(config.parts):
        name = f"m{i}"
        adaptune.add_adapter(model, name, part, activate=False)
        for path, module in adaptune.adapter_modules(model, name).items():
            module.load_state_dict(mixed[host(path)].parts[str(i)].state_dict())
        names.append(name)
    return Stack(*names)


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("config", [MixConfig.mam(), MixConfig.unipelt()], ids=["mam", "unipelt"])
def test_mix_equals_the_stack_of_its_members(config: MixConfig) -> None:
    model = tiny_bert_classifier().eval()
    ids = torch.randint(5, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded row
    inputs = {"input_ids": ids, "attention_mask": mask}
    base = logits(model, inputs)
    adaptune.add_adapter(model, "mix", config)
    randomise(model, "mix")
    mixed = logits(model, inputs)
    assert not torch.allclose(mixed, base)
    adaptune.set_active(model, members_as_adapters(model, "mix", config))
    assert torch.allclose(logits(model, inputs), mixed, atol=1e-6, rtol=0)


def test_mix_trains_saves_loads_and_deletes(tmp_path: Path) -> None:
    model = tiny_bert_classifier().eval()
    inputs = {"input_ids": torch.randint(5, 100, (2, 8), generator=torch.Generator().manual_seed(2))}
    base = logits(model, inputs)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    adaptune.add_adapter(model, "u", MixConfig.unipelt())
    adaptune.train_adapter(model, "u")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    own = {n for n in trainable if f".{n}".count(".adapters.u.")}
    assert own and trainable - own <= {n for n in trainable if n.startswith("classifier")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # step 2: LoRA's A moves once B is non-zero
        model(**inputs).logits.pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    moved = {n for n, p in model.named_parameters() if n in weights and not torch.equal(p, weights[n])}
    assert moved <= {n for n in weights if n.startswith("classifier")}  # the frozen body is untouched
    members = {n.split("adapters.u.")[1].split(".")[1] for n in own}
    assert members == {"0", "1", "2"}  # LoRA, prefix and the gated bottleneck all train
    model.eval()
    adapted = logits(model, inputs)

    adaptune.save_adapter(model, "u", tmp_path / "u")
    fresh = tiny_bert_classifier().eval()
    fresh.load_state_dict({n: w for n, w in model.state_dict().items() if "adapters." not in n})
    assert adaptune.load_adapter(fresh, tmp_path / "u") == "u"
    assert torch.equal(logits(fresh, inputs), adapted)
    assert adaptune.adapter_config(fresh, "u") == MixConfig.unipelt()

    adaptune.set_active(model, None)
    adaptune.delete_adapter(model, "u")
    model.load_state_dict(weights)
    assert torch.equal(logits(model, inputs), base)


def test_mix_on_a_decoder_generates_with_and_without_cache() -> None:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_config("llama")).eval()
    adaptune.add_adapter(model, "mam", MixConfig.mam())
    randomise(model, "mam")
    ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(3))
    kwargs: dict[str, Any] = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_mix_config_round_trip_and_shared_compacter_rule() -> None:
    config = MixConfig(parts=(CompacterConfig(placement="ffn"), LoraConfig(rank=2)))
    again = config_from_dict(config.to_dict())
    assert again == config and again.preset is None
    model = tiny_bert_classifier()
    adaptune.add_adapter(model, "c", config)
    keys = [k for k in model.state_dict() if ".adapters.c." in k]
    assert sum(k.endswith("phm_rule") for k in keys) == 1  # the member's shared rule is stored once


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"parts": (LoraConfig(),)}, "at least two"),
        ({"parts": (MixConfig.mam(), LoraConfig())}, "cannot hold another mix"),
        ({"preset": "nope"}, "one of"),
        ({"parts": (LoraConfig(), {"method": "nope"})}, r"parts\[1\].*not a known adapter method"),
        ({"parts": (LoraConfig(), PrefixConfig()), "layers": "0"}, "belong to each member"),
    ],
)
def test_bad_mix_configs(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MixConfig(**kwargs)


def test_members_hooking_one_module_differently_are_refused() -> None:
    model = tiny_bert_classifier()
    # LoRA on the FFN output reads that projection's input; the parallel bottleneck there reads the FFN input.
    clash = MixConfig(parts=(LoraConfig(targets="ffn"), AdapterConfig.parallel()))
    with pytest.raises(ValueError, match=r"hook .*output\.dense but differently"):
        adaptune.add_adapter(model, "x", clash)
    assert adaptune.list_adapters(model) == []


def test_cli_plans_a_mix(tmp_path: Path, capsys: Any) -> None:
    folder = make_model_dir(tmp_path, "bert")
    assert main(["plan", "--model", str(folder), "--method", "mix", "--mix-preset", "unipelt"]) == 0
    out = capsys.readouterr().out
    assert "mix" in out and "adapter parameters" in out
    assert "attention.self.query" in out and "output.dense" in out  # LoRA and the bottleneck, plus the prefix
    assert main(["plan", "--model", str(folder), "--method", "mix", "--layers", "0"]) == 2
    assert "belong to each member" in capsys.readouterr().err
