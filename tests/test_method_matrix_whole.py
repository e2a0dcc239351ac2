"""Prompt tuning, prefix tuning, the MAM mix (prefix + parallel bottleneck) and the MAD-X language adapter
(bottleneck + invertible coupling) on the whole architecture matrix (``tests/tiny_models.py``).

Where a method applies, one test checks: it fires (the outputs change once its weights are non-zero; MAD-X is an
exact identity before that), one optimiser step changes only its own tensors, save -> load into a fresh model
reproduces the outputs exactly, and deleting it restores the base exactly. Where it does not apply, adding it is
refused with the rule in the message and leaves the model untouched:

- prefix tuning (and MAM, which holds a prefix) feeds Transformers' key/value cache: models whose forward takes no
  ``cache`` (DistilBERT, ALBERT, DeBERTa-v2, ModernBERT, MPNet, SqueezeBERT) and encoder-decoders (T5, BART, mBART)
  are refused;
- prompt / prefix tuning need a text model: Whisper (audio features), ViT and CLIP (pixels), wav2vec2 (samples);
- MAD-X needs input embeddings: ViT, CLIP and wav2vec2 have none (Transformers has no get_input_embeddings there).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adaptune
from adaptune import MixConfig, PrefixConfig, PromptConfig

from .tiny_models import MODEL_TYPES, build_model, make_inputs, output_tensors

NO_CACHE = {"distilbert", "albert", "deberta-v2", "modernbert", "mpnet", "squeezebert", "t5", "bart", "mbart"}
NOT_TEXT = {"whisper", "vit", "clip", "wav2vec2"}
REFUSED: dict[str, dict[str, str]] = {
    "prompt": dict.fromkeys(NOT_TEXT, "need a Transformers text model"),
    "prefix": dict.fromkeys(NO_CACHE, "forward takes `cache`") | dict.fromkeys(NOT_TEXT, "text model"),
    "mam": dict.fromkeys(NO_CACHE, "forward takes `cache`") | dict.fromkeys(NOT_TEXT, "text model"),
    "madx": dict.fromkeys(("vit", "clip", "wav2vec2"), "no input embeddings"),
}
CONFIGS = {
    "prompt": lambda: PromptConfig(num_virtual_tokens=3),
    "prefix": lambda: PrefixConfig(prefix_length=3, reparam_hidden=16),
    "mam": MixConfig.mam,
    "madx": MixConfig.madx,
}


def run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.clone() for t in output_tensors(model(**inputs))]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_whole_model_methods_and_mixes(model_type: str, method: str, tmp_path: Path) -> None:
    model = build_model(model_type, seed=0)
    inputs = make_inputs(model_type)
    base = run(model, inputs)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    if model_type in REFUSED[method]:
        with pytest.raises(ValueError, match=REFUSED[method][model_type]):
            adaptune.add_adapter(model, "a", CONFIGS[method]())
        assert adaptune.list_adapters(model) == [] and same(run(model, inputs), base)
        assert not any(n.endswith("adapters") for n, _ in model.named_modules())  # no empty slot left behind
        return

    adaptune.add_adapter(model, "a", CONFIGS[method]())
    if method == "madx":
        assert same(run(model, inputs), base)  # bottleneck and coupling start as exact identities
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in adaptune.adapter_modules(model, "a").values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    adapted = run(model, inputs)
    assert not same(adapted, base)

    adaptune.train_adapter(model, "a", heads=())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sum(t.float().pow(2).mean() for t in output_tensors(model(**inputs)) if t.is_floating_point()).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if n not in weights or not torch.equal(p, weights[n])}
    assert changed and all("adapters.a." in f".{n}" for n in changed), sorted(changed)[:3]
    model.eval()
    adapted = run(model, inputs)

    adaptune.save_adapter(model, "a", tmp_path / "a")
    fresh = build_model(model_type, seed=0)
    adaptune.load_adapter(fresh, tmp_path / "a")
    assert same(run(fresh.eval(), inputs), adapted)

    adaptune.set_active(model, None)
    adaptune.delete_adapter(model, "a")
    assert same(run(model, inputs), base)
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
