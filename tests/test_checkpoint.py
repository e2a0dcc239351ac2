"""training.checkpoint: weights and state round trip, only the newest ``keep`` kept, corrupt or incomplete
checkpoints skipped, and a checkpoint of other trainable parameters refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

import adaptune
from adaptune import AdapterConfig
from adaptune.training.checkpoint import find_latest, load_checkpoint, rng_state, save_checkpoint, set_rng_state

from .helpers import randomize, tiny_bert_classifier


def _model(reduction_factor: int = 4) -> nn.Module:
    model = tiny_bert_classifier(layers=2)
    adaptune.add_adapter(model, "a", AdapterConfig.pfeiffer(reduction_factor=reduction_factor))
    adaptune.train_adapter(model, "a")
    return model


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save(model: nn.Module, out: Path, step: int, keep: int = 2) -> dict[str, torch.Tensor]:
    weights = _trainable(model)
    save_checkpoint(out, step, weights, {"step": step, "history": [float(step)]}, keep=keep)
    return weights


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path: Path) -> None:
    model = _model()
    randomize(model, "a", seed=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([1])).loss.backward()
    opt.step()
    weights = _trainable(model)
    random.seed(3)
    torch.manual_seed(3)
    state = {"step": 12, "optimizer": opt.state_dict(), "rng": rng_state(), "history": [0.9, 0.7]}
    after_save = (random.random(), torch.rand(3))
    save_checkpoint(tmp_path, 12, weights, state)

    fresh = _model()  # different adapter weights (identity init)
    assert not all(torch.equal(p, weights[n]) for n, p in fresh.named_parameters() if p.requires_grad)
    loaded = load_checkpoint(tmp_path, fresh)
    assert loaded is not None
    assert loaded["step"] == 12 and loaded["history"] == [0.9, 0.7]
    assert Path(loaded["folder"]).name == "step-0000012"
    assert all(torch.equal(p, weights[n]) for n, p in fresh.named_parameters() if p.requires_grad)
    opt2 = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    opt2.load_state_dict(loaded["optimizer"])
    first = next(iter(opt.state.values()))
    assert torch.equal(next(iter(opt2.state.values()))["exp_avg"], first["exp_avg"])
    set_rng_state(loaded["rng"])  # the random streams continue exactly where the save left them
    assert (random.random(), torch.rand(3).tolist()) == (after_save[0], after_save[1].tolist())


def test_only_the_newest_keep_are_kept(tmp_path: Path) -> None:
    model = _model()
    for step in (1, 2, 3, 4):
        _save(model, tmp_path, step, keep=2)
    assert [p.name for p in find_latest(tmp_path)] == ["step-0000004", "step-0000003"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000003", "step-0000004"]


def test_corrupt_newest_falls_back_to_the_previous(tmp_path: Path) -> None:
    model = _model()
    randomize(model, "a", seed=1)
    good = _save(model, tmp_path, 1)
    randomize(model, "a", seed=2)
    newest = _save(model, tmp_path, 2)
    (tmp_path / "checkpoints" / "step-0000002" / "trainable.safetensors").write_bytes(b"\x00garbage")
    fresh = _model()
    with pytest.warns(UserWarning, match=r"step-0000002: unreadable checkpoint"):
        loaded = load_checkpoint(tmp_path, fresh)
    assert loaded is not None and loaded["step"] == 1
    params = dict(fresh.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in good.items())
    assert not all(torch.equal(params[n], v) for n, v in newest.items())


def test_a_folder_without_the_complete_marker_is_ignored(tmp_path: Path) -> None:
    model = _model()
    _save(model, tmp_path, 1, keep=5)
    _save(model, tmp_path, 2, keep=5)
    (tmp_path / "checkpoints" / "step-0000002" / "COMPLETE").unlink()  # as if the run died mid-write
    assert [p.name for p in find_latest(tmp_path)] == ["step-0000001"]
    loaded = load_checkpoint(tmp_path, _model())
    assert loaded is not None and loaded["step"] == 1


def test_no_checkpoint_gives_none(tmp_path: Path) -> None:
    assert find_latest(tmp_path) == []
    assert load_checkpoint(tmp_path, _model()) is None


def test_mismatched_trainable_parameters_raise(tmp_path: Path) -> None:
    _save(_model(reduction_factor=4), tmp_path, 1)
    with pytest.raises(ValueError, match=r"does not match this run's trainable parameters.*mis-shaped \['bert"):
        load_checkpoint(tmp_path, _model(reduction_factor=8))  # saved bottleneck 8 wide, this one 4
    other = _model()
    adaptune.add_adapter(other, "b", AdapterConfig.pfeiffer(reduction_factor=4))
    adaptune.train_adapter(other, ["a", "b"])
    with pytest.raises(ValueError, match=r"missing \['bert.encoder.layer.0.output.*adapters.b"):
        load_checkpoint(tmp_path, other)
