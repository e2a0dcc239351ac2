"""The training run's parts: the LR schedule, the epoch order, the stages prepare / fit / finish on a tiny model,
the signal handling, and the options declared once on RunConfig."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from adaptune.training.config import RunConfig
from adaptune.training.options import add_options, to_argv, values_from_args
from adaptune.training.run import epoch_order, finish, fit, lr_factor, prepare
from adaptune.training.signals import StopSignals, Terminated

from .cli_fixtures import make_model_dir, make_sentiment_csv


def test_lr_factor_warms_up_then_decays_linearly() -> None:
    # total 10, warm-up 2: the warm-up ramp times the decay (10 - s) / 8, so the peak is at the end of warm-up
    got = [lr_factor(s, total=10, warmup=2) for s in range(11)]
    want = [0.5 * 10 / 8, 9 / 8, 8 / 8, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0]
    assert got == pytest.approx(want)
    assert lr_factor(12, total=10, warmup=2) == 0.0  # past the end: never negative
    # no warm-up: plain linear decay from 1
    assert [lr_factor(s, total=4, warmup=0) for s in range(5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    a = epoch_order(seed=3, epoch=1, n=20)
    assert sorted(a) == list(range(20))
    assert a == epoch_order(3, 1, 20) and a != epoch_order(3, 2, 20) and a != epoch_order(4, 1, 20)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("run")
    return {"model": make_model_dir(root, "bert"), "csv": make_sentiment_csv(root / "d.csv", n=60)}


def config(tiny: dict[str, Path], out: Path, **kw) -> RunConfig:
    kw = {"max_steps": 3, "batch_size": 8, "max_length": 16, "lr": 1e-2, "eval_limit": 8} | kw
    return RunConfig(data=str(tiny["csv"]), out=str(out), model=str(tiny["model"]), **kw)


def test_stages_prepare_fit_finish(tiny: dict[str, Path], tmp_path: Path) -> None:
    run = prepare(config(tiny, tmp_path, save_every=2))
    n_train = len(run.data.train)
    assert (run.step, run.total, run.batches_per_epoch) == (0, 3, -(-n_train // 8))
    warmup = int(0.06 * 3)
    assert run.sched.get_last_lr() == pytest.approx([1e-2 * lr_factor(0, 3, warmup)])
    assert all(p.requires_grad for p in run.params) and 0 < len(run.params) < len(list(run.model.parameters()))
    before = [p.detach().clone() for p in run.params]

    fit(run)
    assert run.step == 3 and [h["step"] for h in run.history] == [1, 2, 3]
    assert [h["lr"] for h in run.history] == pytest.approx([1e-2 * lr_factor(s, 3, warmup) for s in (1, 2, 3)])
    assert any(not torch.equal(a, b) for a, b in zip(before, run.params, strict=True))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000002"]  # save_every 2, not the end

    result = finish(run)
    assert result.metrics["steps"] == 3 and 0 <= result.metrics["test_accuracy"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 3
    assert (tmp_path / "adapter" / "task.json").is_file() and (tmp_path / "report" / "report.md").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]


def test_interrupt_checkpoints_the_start_of_the_step(tiny: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    import adaptune.training.run as run_mod

    run = prepare(config(tiny, tmp_path, save_every=100))
    real, calls = run_mod._encode, {"n": 0}

    def stop_in_step_3(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the forward: handled like Ctrl-C
        return real(*args)

    monkeypatch.setattr(run_mod, "_encode", stop_in_step_3)
    with pytest.raises(Terminated):
        fit(run)
    state = torch.load(tmp_path / "checkpoints" / "step-0000002" / "state.pt", weights_only=True)
    assert (state["step"], state["cursor"], len(state["history"])) == (2, 2, 2)  # step 3 is redone on resume
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the loop


def test_stop_signals_defer_inside_an_update() -> None:
    with StopSignals() as stop:
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # not raised here: an update is never cut in half
        with pytest.raises(Terminated):
            stop.raise_pending()
        with pytest.raises(KeyboardInterrupt) as err:
            os.kill(os.getpid(), signal.SIGINT)
        assert not isinstance(err.value, Terminated)
    # several processes: the signal only marks this rank; the ranks agree at the step boundary
    asked: list[bool] = []
    with StopSignals(agree=lambda flag: asked.append(flag) or True) as stop, pytest.raises(Terminated):
        stop.raise_pending()  # another rank got SIGTERM: this one stops too
    assert asked == [False]


def test_run_options_declared_once_round_trip() -> None:
    p = argparse.ArgumentParser()
    add_options(p, RunConfig, command="train")
    values = {"data": "d.csv", "out": "o", "task": "qa", "max_steps": 7, "lr": 0.5, "resume": True,
              "train_modules": ("bert.pooler", "x"), "base_dropout": False, "limit": None}  # fmt: skip
    argv = to_argv(RunConfig, values)
    assert argv[:4] == ["--data", "d.csv", "--out", "o"] and "--limit" not in argv
    assert argv[argv.index("--base-dropout") + 1] == "off"
    parsed = values_from_args(RunConfig, p.parse_args(argv))
    assert {k: parsed[k] for k in values} == values
    cfg = RunConfig(**parsed, adapter=None)
    assert cfg.strategy == "ddp" and cfg.epochs == 1.0  # fields not given keep RunConfig's defaults
    fuse = argparse.ArgumentParser()
    add_options(fuse, RunConfig, command="fuse")
    assert values_from_args(RunConfig, fuse.parse_args(["--data", "d", "--out", "o", "--adapters", "a", "b"]))[
        "fuse_from"
    ] == ("a", "b")
