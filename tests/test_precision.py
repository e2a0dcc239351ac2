"""The precision policy (core/precision.py): auto decision, parameter dtypes, bf16 training, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

import adaptune
from adaptune.core import precision as prec
from adaptune.core.precision import (
    add_input_casts,
    apply_precision,
    autocast,
    cpu_bf16_features,
    is_norm,
    resolve_precision,
)

BF16 = prec.Precision("bf16", torch.bfloat16, torch.bfloat16, "test")
FP32 = prec.Precision("fp32", torch.float32, torch.float32, "test")


def tiny_bert(seed: int = 0) -> nn.Module:
    cfg = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(cfg)


def adapter_model(seed: int = 0) -> nn.Module:
    model = tiny_bert(seed)
    adaptune.add_adapter(model, "a", adaptune.AdapterConfig.pfeiffer(reduction_factor=4))
    adaptune.train_adapter(model, "a")
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 100, (4, 9), generator=g), torch.randint(0, 2, (4,), generator=g)


def train_step(model: nn.Module, precision: prec.Precision) -> tuple[torch.Tensor, torch.optim.AdamW]:
    ids, labels = batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    with autocast(precision, "cpu"):
        logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    opt.step()
    return loss, opt


# ---- the decision ------------------------------------------------------------------------------------------
def test_auto_picks_bf16_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_bf16_features", lambda: ("avx512_bf16",))
    p = resolve_precision("auto", "cpu")
    assert (p.name, p.compute_dtype, p.storage_dtype) == ("bf16", torch.bfloat16, torch.bfloat16)
    assert p.reason == "auto: bf16 (CPU has avx512_bf16)"


def test_auto_falls_back_to_fp32_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_bf16_features", lambda: ())
    p = resolve_precision("auto", "cpu")
    assert (p.name, p.compute_dtype, p.is_reduced) == ("fp32", torch.float32, False)
    assert p.reason == "auto: fp32 (no native bf16 on this CPU)"
    forced = resolve_precision("bf16", "cpu")  # an explicit request is honoured, with a warning in the reason
    assert forced.name == "bf16" and "emulated" in forced.reason


def test_auto_on_cuda_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cuda_bf16_supported", lambda: True)
    assert resolve_precision("auto", torch.device("cuda", 0)).name == "bf16"
    monkeypatch.setattr(prec, "cuda_bf16_supported", lambda: False)
    p = resolve_precision("auto", "cuda:1")
    assert p.name == "fp32" and "no native bf16" in p.reason
    fp16 = resolve_precision("fp16", "cuda")
    assert fp16.compute_dtype == torch.float16 and fp16.needs_grad_scaler


def test_fp16_on_cpu_and_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="fp16 on CPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", "cpu")
    assert resolve_precision("fp32", "cpu").reason == "fp32 requested"


def test_cpu_detection_reads_only_bf16_flags() -> None:
    assert set(cpu_bf16_features()) <= {"avx512_bf16", "amx_bf16"}


# ---- applying it -------------------------------------------------------------------------------------------
def test_frozen_base_is_bf16_and_trainables_fp32() -> None:
    model = adapter_model()
    buffers = {k: v.dtype for k, v in model.named_buffers()}
    summary = apply_precision(model, BF16)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and any("classifier" in n for n in trainable) and any("adapters" in n for n in trainable)
    for n, p in model.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), n
    assert {k: v.dtype for k, v in model.named_buffers()} == buffers  # buffers are never cast
    assert summary.trainable == len(trainable) and summary.kept == 0
    assert summary.cast == sum(1 for p in model.parameters() if not p.requires_grad)
    assert summary.bytes < 0.6 * summary.bytes_fp32
    assert apply_precision(model, BF16) == summary  # idempotent


def test_keep_norms_fp32() -> None:
    model = adapter_model()
    summary = apply_precision(model, BF16, keep=is_norm)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            assert m.weight.dtype == torch.float32
    assert summary.kept == sum(
        2 for m in model.modules() if isinstance(m, nn.LayerNorm) and not m.weight.requires_grad
    )
    assert model.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16


def test_a_parameter_that_starts_training_comes_back_to_fp32() -> None:
    model = adapter_model()
    apply_precision(model, BF16)
    w = model.bert.pooler.dense.weight
    w.requires_grad_(True)
    apply_precision(model, BF16)
    assert model.bert.pooler.dense.weight is w and w.dtype == torch.float32  # same Parameter object


def test_ties_survive() -> None:
    emb = nn.Embedding(10, 4)
    model = nn.ModuleDict({"emb": emb, "head": nn.Linear(4, 10, bias=False)})
    model["head"].weight = emb.weight
    model.requires_grad_(False)
    summary = apply_precision(model, BF16)
    assert model["head"].weight is model["emb"].weight and emb.weight.dtype == torch.bfloat16
    assert summary.cast == 1


def test_full_fine_tuning_keeps_everything_fp32() -> None:
    model = adapter_model()
    summary = apply_precision(model, BF16, frozen_base=False)
    assert all(p.dtype == torch.float32 for p in model.parameters()) and summary.cast == 0
    full = tiny_bert()
    apply_precision(full, BF16, frozen_base=False)
    loss, _ = train_step(full, BF16)
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in full.parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in full.parameters())


def test_fp32_precision_is_a_no_op_cast() -> None:
    model = adapter_model()
    apply_precision(model, FP32)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ---- training under it -------------------------------------------------------------------------------------
def test_bf16_training_step_grads_only_on_trainables_in_fp32() -> None:
    model = adapter_model()
    apply_precision(model, BF16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, opt = train_step(model, BF16)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n
        else:
            assert p.grad is None and torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    states = list(opt.state.values())
    assert states and all(
        s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32 for s in states
    )


def test_explicit_casts_without_autocast() -> None:
    model = adapter_model()
    apply_precision(model, BF16)
    ids, _ = batch()
    with pytest.raises(RuntimeError):  # a fp32 head after a bf16 pooler needs a boundary cast
        model(input_ids=ids)
    assert add_input_casts(model) == 1
    logits = model(input_ids=ids).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert add_input_casts(model, enabled=False) == 0
    assert not model.classifier._forward_pre_hooks


def test_autocast_is_a_no_op_for_fp32() -> None:
    with autocast(FP32, "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(BF16, "cpu"):
        assert torch.is_autocast_enabled("cpu")


# ---- saved adapters are precision-independent ---------------------------------------------------------------
def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".adapters." in n or "classifier" in n}


def test_adapter_trained_in_bf16_saves_fp32_and_loads_into_fp32(tmp_path: Path) -> None:
    model = adapter_model()
    apply_precision(model, BF16)
    train_step(model, BF16)
    folder = adaptune.save_adapter(model, "a", tmp_path / "a")
    saved = {**load_file(str(folder / "adapter.safetensors")), **load_file(str(folder / "head.safetensors"))}
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    fresh = tiny_bert()
    adaptune.load_adapter(fresh, folder)
    assert all(p.dtype == torch.float32 for p in fresh.parameters())
    got, want = adapter_state(fresh), adapter_state(model)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_adapter_trained_in_fp32_loads_into_a_bf16_base(tmp_path: Path) -> None:
    model = adapter_model()
    train_step(model, FP32)
    folder = adaptune.save_adapter(model, "a", tmp_path / "a")
    target = tiny_bert()
    adaptune.load_adapter(target, folder)
    adaptune.train_adapter(target, "a")
    apply_precision(target, BF16)
    got, want = adapter_state(target), adapter_state(model)
    assert got.keys() == want.keys() and all(
        got[k].dtype == torch.float32 and torch.equal(got[k], want[k]) for k in want
    )
    ids, _ = batch()
    target.eval()
    with torch.no_grad(), autocast(BF16, "cpu"):
        assert torch.isfinite(target(input_ids=ids).logits).all()


def test_set_precision_is_the_one_call_for_users() -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    import adaptune

    cfg = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    model = AutoModelForSequenceClassification.from_config(cfg)
    adaptune.add_adapter(model, "a")
    adaptune.train_adapter(model, "a")
    precision = adaptune.set_precision(model, "bf16")
    assert precision.name == "bf16"
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    with adaptune.autocast(precision, "cpu"):
        loss = model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([1])).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
