"""LoRA and (IA)³ on the architecture matrix (tiny models of every type in ``tests/tiny_models.py``, no download).

For each (model type, method) one test checks: a new adapter is an exact identity (LoRA: B = 0; (IA)³: ones), every
adapter fires, an optimiser step changes only the method's tensors (and all of them get gradients), merge gives
the unmerged outputs within 1e-5 and unmerge restores every base weight bit for bit, save -> load into a fresh
model reproduces outputs exactly, and deleting the adapter restores the base exactly.

Where a method does not apply:
- (IA)³'s FFN scaling needs a linear FFN output projection; Mixtral's experts are fused ``nn.Parameter`` tensors
  (no linear), so on mixtral (IA)³ scales keys and values only (``targets="kv"``). qwen2_moe's scaling lands
  on its shared expert's ``down_proj`` only (the routed experts are fused).
- Compacter (``test_compacter_matrix``) is a bottleneck with PHM projections: it is not linear in its input, so
  there is no merge; identity at init comes from the up-projection's zero right factor and bias, so the first
  optimiser step reaches only those (the rule and the down-projection get gradients once they are non-zero).
- Merging needs a dense weight: SqueezeBERT's projections are grouped 1x1 ``nn.Conv1d`` (groups=4), so LoRA and
  (IA)³ run there unmerged and ``merge_adapter`` refuses with the reason (checked below).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adaptune
from adaptune import CompacterConfig, IA3Config, LoraConfig

from .tiny_models import MODEL_TYPES, build_model, make_inputs, output_tensors

GROUPED_CONV = {"squeezebert"}


def run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.clone() for t in output_tensors(model(**inputs))]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor], what: str, atol: float = 0.0) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if atol == 0.0:
            assert torch.equal(x, y), f"{what}: output {i} differs by {(x - y).abs().max().item():.3g}"
        elif x.is_floating_point():
            assert (x - y).abs().max().item() <= atol, f"{what}: output {i} differs by {(x - y).abs().max():.3g}"


def config_for(method: str, model_type: str) -> LoraConfig | IA3Config:
    if method == "lora":
        return LoraConfig(rank=2, alpha=4, targets="all")
    return IA3Config(targets="kv" if model_type == "mixtral" else "kv_ffn")


def train_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> set[str]:
    """One AdamW step on adapter "a"; returns the names of the parameters it changed."""
    adaptune.train_adapter(model, "a")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    loss = sum(t.float().pow(2).mean() for t in output_tensors(model(**inputs)) if t.is_floating_point())
    loss.backward()
    opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_matrix(model_type: str, method: str, tmp_path: Path) -> None:
    model = build_model(model_type, seed=0)
    inputs = make_inputs(model_type)
    base = run(model, inputs)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}

    targets = adaptune.add_adapter(model, "a", config_for(method, model_type))
    assert targets and all(t.layer >= 0 for t in targets)
    assert_same(run(model, inputs), base, "new adapter")
    assert adaptune.check_adapters_fire(model, **inputs) == []

    changed = train_step(model, inputs)
    own = {n for n in changed if ".adapters.a." in n}
    assert changed == own, sorted(changed - own)
    expected = {f"{p}.{k}" for p, m in adaptune.adapter_modules(model, "a").items() for k, _ in m.named_parameters()}
    wanted = {n for n in expected if not n.endswith(".A")}  # A gets no gradient while B is still zero
    assert wanted <= changed, f"no gradient reached {sorted(wanted - changed)[:3]}"
    model.zero_grad(set_to_none=True)
    adapted = run(model, inputs)
    assert any(not torch.equal(x, y) for x, y in zip(adapted, base, strict=True))

    if model_type in GROUPED_CONV:
        with pytest.raises(TypeError, match="cannot merge into a Conv1d"):
            adaptune.merge_adapter(model, "a")
    else:
        adaptune.merge_adapter(model, "a")
        assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
        assert_same(run(model, inputs), adapted, "merged", atol=1e-5)
        adaptune.set_active(model, None)  # the merged weights alone carry the adapter
        assert_same(run(model, inputs), adapted, "merged, no hooks", atol=1e-5)
        adaptune.set_active(model, "a")
        adaptune.unmerge_adapter(model, "a")
        assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights), "unmerge"
        assert_same(run(model, inputs), adapted, "unmerged")

    _save_load_delete(model, model_type, inputs, (base, adapted), weights, tmp_path)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_compacter_matrix(model_type: str, tmp_path: Path) -> None:
    """Compacter (Houlsby placement, shared rule): identity, fires, trains only its own tensors, save -> load
    exact with one copy of the shared rule, delete restores the base."""
    model = build_model(model_type, seed=0)
    inputs = make_inputs(model_type)
    base = run(model, inputs)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}

    targets = adaptune.add_adapter(model, "a", CompacterConfig())
    assert targets
    assert_same(run(model, inputs), base, "new adapter")
    assert adaptune.check_adapters_fire(model, **inputs) == []

    changed = train_step(model, inputs)
    own = {n for n in changed if ".adapters.a." in n}
    assert changed == own, sorted(changed - own)
    modules = adaptune.adapter_modules(model, "a")
    expected = {f"{p}.{k}" for p, m in modules.items() for k, _ in m.named_parameters()}
    assert sum(k.endswith(".phm_rule") for k in expected) == 1  # the shared rule: one tensor, at the first place
    wanted = {n for n in expected if n.endswith((".up.W_right", ".up.b"))}  # the rest are 0-gradient at step 1
    assert wanted <= changed, f"no gradient reached {sorted(wanted - changed)[:3]}"
    train_step(model, inputs)  # now the rule, the down-projection and up.W_left move too
    model.zero_grad(set_to_none=True)
    adapted = run(model, inputs)
    assert any(not torch.equal(x, y) for x, y in zip(adapted, base, strict=True))

    _save_load_delete(model, model_type, inputs, (base, adapted), weights, tmp_path)


def _save_load_delete(
    model: torch.nn.Module,
    model_type: str,
    inputs: dict,
    outputs: tuple,
    weights: dict[str, torch.Tensor],
    tmp_path: Path,
) -> None:
    """Adapter "a" saved and loaded into a fresh model gives ``adapted``; deleting it gives ``base`` and the
    original weights back, bit for bit."""
    base, adapted = outputs
    adaptune.save_adapter(model, "a", tmp_path / "a")
    fresh = build_model(model_type, seed=0)
    adaptune.load_adapter(fresh, tmp_path / "a")
    assert_same(run(fresh, inputs), adapted, "save -> load")

    adaptune.set_active(model, None)
    adaptune.delete_adapter(model, "a")
    assert_same(run(model, inputs), base, "after delete")
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
