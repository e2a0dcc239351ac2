"""The precision policy inside a training run: what is stored in which dtype, what the optimizer holds, what is
saved, the fp32 fallback of ``auto``, and a bit-identical resume under bf16."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adaptune
import adaptune.core.precision as precision_mod
from adaptune.training.config import RunConfig
from adaptune.training.run import finish, fit, prepare, run_training
from adaptune.training.signals import Terminated

from .cli_fixtures import make_model_dir, make_sentiment_csv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision_run")
    return {"model": make_model_dir(root, "bert"), "csv": make_sentiment_csv(root / "d.csv", n=60)}


def config(tiny: dict[str, Path], out: Path, **kw) -> RunConfig:
    kw = {"max_steps": 3, "batch_size": 8, "max_length": 16, "lr": 1e-2, "eval_limit": 8, "save_every": 100} | kw
    return RunConfig(data=str(tiny["csv"]), out=str(out), model=str(tiny["model"]), **kw)


def test_bf16_adapter_run_stores_the_base_low_and_trains_fp32(tiny: dict[str, Path], tmp_path: Path) -> None:
    run = prepare(config(tiny, tmp_path, precision="bf16"))
    assert run.precision.name == "bf16"
    frozen = [p for p in run.model.parameters() if not p.requires_grad]
    assert frozen and {p.dtype for p in frozen} == {torch.bfloat16}
    assert run.params and {p.dtype for p in run.params} == {torch.float32}  # adapter + classifier head

    fit(run)
    states = list(run.opt.state.values())
    assert len(states) == len(run.params)
    assert {s["exp_avg"].dtype for s in states} == {s["exp_avg_sq"].dtype for s in states} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in run.history)

    result = finish(run)
    assert result.metrics["precision"] == "bf16" and result.metrics["precision_reason"] == "bf16 requested"
    saved = load_file(str(tmp_path / "adapter" / "adapter.safetensors"))
    head = load_file(str(tmp_path / "adapter" / "head.safetensors"))
    assert {t.dtype for t in [*saved.values(), *head.values()]} == {torch.float32}  # saves stay fp32

    # ... and load into a plain fp32 model, where they compute in fp32
    from transformers import AutoModelForSequenceClassification

    fp32 = AutoModelForSequenceClassification.from_pretrained(tiny["model"], num_labels=2).eval()
    adaptune.load_adapter(fp32, tmp_path / "adapter")
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    adapted = adaptune.adapter_modules(fp32, "adapter")
    for path, module in adapted.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, saved[f"{path}.{key}"])


def test_full_finetuning_keeps_fp32_weights_under_bf16(tiny: dict[str, Path], tmp_path: Path) -> None:
    run = prepare(config(tiny, tmp_path, precision="bf16", adapter=None, lr=1e-4))
    assert run.precision.name == "bf16"  # the forward runs under autocast ...
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}  # ... with fp32 master weights
    assert all(p.requires_grad for p in run.model.parameters())


def test_auto_falls_back_to_fp32_without_native_bf16(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision_mod, "cpu_bf16_features", lambda: ())
    run = prepare(config(tiny, tmp_path))  # precision defaults to auto
    assert run.precision.name == "fp32" and run.precision.reason == "auto: fp32 (no native bf16 on this CPU)"
    assert {p.dtype for p in run.model.parameters()} == {torch.float32}

    monkeypatch.setattr(precision_mod, "cpu_bf16_features", lambda: ("avx512_bf16",))
    run = prepare(config(tiny, tmp_path / "b"))
    assert run.precision.name == "bf16" and run.precision.reason == "auto: bf16 (CPU has avx512_bf16)"


def test_bf16_resume_is_bit_identical(tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptune.training.run as run_mod

    steps = {"max_steps": 5, "precision": "bf16"}
    run_training(config(tiny, tmp_path / "whole", **steps))

    run = prepare(config(tiny, tmp_path / "cut", **steps))
    real, calls = run_mod._encode, {"n": 0}

    def stop_in_step_4(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # handled like Ctrl-C: checkpoint at the start of step 4
        return real(*args)

    monkeypatch.setattr(run_mod, "_encode", stop_in_step_4)
    with pytest.raises(Terminated):
        fit(run)
    monkeypatch.setattr(run_mod, "_encode", real)
    run_training(config(tiny, tmp_path / "cut", resume=True, **steps))

    for name in ("adapter.safetensors", "head.safetensors"):
        whole = load_file(str(tmp_path / "whole" / "adapter" / name))
        cut = load_file(str(tmp_path / "cut" / "adapter" / name))
        assert whole.keys() == cut.keys()
        assert all(torch.equal(whole[k], cut[k]) for k in whole), name
