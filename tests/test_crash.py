"""Crash safety: SIGKILL at a random step, then --resume, ends with the bit-identical adapter of an uninterrupted
run; a corrupt newest checkpoint is reported and the previous good one is used."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .cli_fixtures import make_model_dir, make_sentiment_csv, run_env


def cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "adaptune.cli", *args]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path, "bert")  # dropout on: the RNG state must be restored too
    data = make_sentiment_csv(tmp_path / "d.csv", n=120)
    args = [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--batch-size",
        "8",
        "--max-steps",
        "12",
        "--save-every",
        "1",
        "--lr",
        "1e-2",
        "--max-length",
        "16",
        "--adapter-dropout",
        "0.1",
        "--eval-limit",
        "8",
    ]
    done = subprocess.run(
        cli([*args, "--out", str(tmp_path / "full")]), env=run_env(), capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]

    kill_at = random.randint(2, 9)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cli([*args, "--out", str(cut)]), env=run_env(), stderr=subprocess.DEVNULL)
    marker = cut / "checkpoints" / f"step-{kill_at:07d}" / "COMPLETE"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "adapter").exists(), f"run finished before the kill at step {kill_at}"

    # Corrupt the newest checkpoint: resume must report it and fall back to the previous one.
    newest = sorted((cut / "checkpoints").glob("step-*"))[-1]
    (newest / "trainable.safetensors").write_bytes(b"\x00garbage")
    done = subprocess.run(
        cli([*args, "--out", str(cut), "--resume"]), env=run_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unreadable checkpoint" in done.stderr and "resumed from" in done.stderr

    a = load_file(tmp_path / "full" / "adapter" / "adapter.safetensors")
    b = load_file(cut / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"differs after a kill at step {kill_at}"
