"""SIGTERM (schedulers, containers, preemptible machines) stops `adaptune train` like Ctrl-C: a checkpoint at the
start of the interrupted step, exit status 143, and --resume ends with the adapter of an uninterrupted run, bit for
bit; the same under torchrun, where every rank gets the signal and rank 0 writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .cli_fixtures import free_port, make_model_dir, make_sentiment_csv, run_env, split_csv


def train_args(model: Path, data: Path, steps: int) -> list[str]:
    # --save-every beyond the run: the only checkpoint of a cut run is the one SIGTERM writes.
    return ["train", "--model", str(model), "--data", str(data), "--batch-size", "8", "--max-steps", str(steps),
            "--lr", "1e-2", "--max-length", "16", "--adapter-dropout", "0.1", "--eval-limit", "8",
            "--save-every", "1000", "--log-every", "1"]  # fmt: skip


def term_after(cmd: list[str], needle: str, group: bool = False) -> tuple[int, str]:
    """Start ``cmd``, send SIGTERM once a stderr line contains ``needle`` (to the whole process group with
    ``group``), and return (exit status, all stderr)."""
    proc = subprocess.Popen(cmd, env=run_env(), stderr=subprocess.PIPE, text=True, start_new_session=group)
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        seen.append(line)
        if needle in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGTERM) if group else proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    return proc.wait(timeout=120), "".join(seen) + rest


def assert_same_adapter(a: Path, b: Path) -> None:
    x, y = load_file(a / "adapter.safetensors"), load_file(b / "adapter.safetensors")
    assert x.keys() == y.keys()
    assert all(torch.equal(x[k], y[k]) for k in x), [k for k in x if not torch.equal(x[k], y[k])][:3]


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "adaptune.cli", *args]


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_resumes_bit_identical(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path, "bert")  # dropout on: the RNG state must be restored too
    data = make_sentiment_csv(tmp_path / "d.csv", n=120)
    args = train_args(model, data, 30)
    done = subprocess.run(cli([*args, "--out", str(tmp_path / "full")]), env=run_env(), capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]

    cut = tmp_path / "cut"
    status, err = term_after(cli([*args, "--out", str(cut)]), "step 3/30")
    assert status == 143, err[-2000:]
    assert "terminated (SIGTERM): checkpoint saved" in err and "adaptune: terminated" in err
    assert not (cut / "adapter").exists(), "the run finished before SIGTERM"
    saved = sorted((cut / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and 3 <= int(saved[0].name.split("-")[1]) < 30, saved

    done = subprocess.run(
        cli([*args, "--out", str(cut), "--resume"]), env=run_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {saved[0]}" in done.stderr
    assert_same_adapter(tmp_path / "full" / "adapter", cut / "adapter")


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), "-m", "adaptune.cli", *args]  # fmt: skip


@pytest.mark.slow
def test_sigterm_under_torchrun_every_rank_stops_at_one_step(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path, "bert", dropout=False)  # two processes: no per-rank dropout streams to match
    data = split_csv(tmp_path / "d.csv")
    args = [*train_args(model, data, 24), "--adapter-dropout", "0.0"]
    done = subprocess.run(torchrun([*args, "--out", str(tmp_path / "full")]), env=run_env(), capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]

    cut = tmp_path / "cut"
    # Like a scheduler stopping a job: SIGTERM to every process (torchrun and both ranks).
    status, err = term_after(torchrun([*args, "--out", str(cut)]), "step 3/24", group=True)
    assert status != 0, err[-2000:]
    assert "terminated (SIGTERM): checkpoint saved" in err, err[-3000:]
    saved = sorted((cut / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and (saved[0] / "COMPLETE").is_file(), saved

    done = subprocess.run(
        torchrun([*args, "--out", str(cut), "--resume"]), env=run_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {saved[0]}" in done.stderr
    assert_same_adapter(tmp_path / "full" / "adapter", cut / "adapter")
