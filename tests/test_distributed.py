"""Data-parallel training (torchrun, 2 CPU processes on gloo) gives the adapter a single process gives."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptune.cli import main

from .cli_fixtures import NEGATIVE, POSITIVE, make_model_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_csv(path: Path) -> Path:
    """48 train rows (6 full batches of 8), 8 validation, 8 test: fixed by a split column."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        for i in range(64):
            label = "pos" if i % 2 else "neg"
            word = (POSITIVE if label == "pos" else NEGATIVE)[i % 6]
            split = "train" if i < 48 else "validation" if i < 56 else "test"
            w.writerow([f"the film was {word} {i % 7}", label, split])
    return path


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path: Path) -> None:
    model = make_model_dir(tmp_path, "bert", dropout=False)
    data = split_csv(tmp_path / "data.csv")
    args = ["train", "--model", str(model), "--data", str(data), "--batch-size", "8", "--max-steps", "5",
            "--lr", "1e-2", "--max-length", "16", "--preset", "houlsby", "--save-every", "2"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "single")]) == 0

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "adaptune.cli", *args, "--out", str(tmp_path / "ddp")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("adaptune: step 5/5") == 1  # rank 0 logs; the other stays quiet

    single = load_file(tmp_path / "single" / "adapter" / "adapter.safetensors")
    ddp = load_file(tmp_path / "ddp" / "adapter" / "adapter.safetensors")
    assert single.keys() == ddp.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
    head_single = load_file(tmp_path / "single" / "adapter" / "head.safetensors")
    head_ddp = load_file(tmp_path / "ddp" / "adapter" / "head.safetensors")
    for key in head_single:
        torch.testing.assert_close(head_ddp[key], head_single[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.equal(single[k], torch.zeros_like(single[k])) for k in single if "up.weight" in k)
