"""PerExample under ``generate``: beam search and ``num_return_sequences`` grow the batch k-fold
(``repeat_interleave`` order), and each prompt's k rows still run that prompt's setup."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import adaptune
from adaptune import AdapterConfig, PerExample

from .helpers import randomize
from .tiny_models import VOCAB, tiny_config

PROMPT_LEN, NEW_TOKENS = 6, 6


@pytest.fixture
def llama() -> nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    # No early stop: every row generates NEW_TOKENS, so batched and one-by-one outputs have the same length.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    for i, name in enumerate(("a", "b")):
        adaptune.add_adapter(model, name, AdapterConfig.pfeiffer(), activate=False)
        randomize(model, name, seed=i + 1)  # a new adapter is an identity; make a and b differ from the base
    return model


def generate(model: nn.Module, ids: torch.Tensor, **kw: int) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, **kw)
    return out[:, PROMPT_LEN:]


@pytest.mark.parametrize(
    "kw",
    [{"num_beams": 2}, {"num_beams": 3, "num_return_sequences": 2}, {"do_sample": False, "num_beams": 1}],
    ids=["beams2", "beams3_return2", "greedy"],
)
def test_per_example_generate_equals_each_prompt_alone(llama: nn.Module, kw: dict[str, int]) -> None:
    ids = torch.randint(3, VOCAB, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(5))
    adaptune.set_active(llama, PerExample(["a", "b"]))
    batched = generate(llama, ids, **kw)
    k = kw.get("num_return_sequences", 1)
    assert batched.shape == (2 * k, NEW_TOKENS)
    alone = {}
    for i, name in enumerate(("a", "b")):
        adaptune.set_active(llama, name)
        alone[name] = generate(llama, ids[i : i + 1], **kw)
        torch.testing.assert_close(batched[i * k : (i + 1) * k], alone[name], rtol=0, atol=0)
    # The adapters matter: prompt 0 under b generates something else than under a.
    assert not torch.equal(generate(llama, ids[:1], **kw), alone["a"])  # b is still active


def test_per_example_other_mismatch_is_still_an_error(llama: nn.Module) -> None:
    adaptune.set_active(llama, PerExample(["a", "b", None]))
    ids = torch.randint(3, VOCAB, (4, PROMPT_LEN), generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), pytest.raises(ValueError, match="per-example setup has 3 entries but the hooked tensor"):
        llama(input_ids=ids)  # 4 rows, 3 setups: not a k-fold expansion
