"""Distributed training (torchrun, 2 CPU processes on gloo; DDP and FSDP2) gives the adapter one process gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptune.cli import main

from .cli_fixtures import free_port, make_model_dir, split_csv


def torchrun(
    args: list[str], out: Path, launcher: str = "torchrun", command: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node 2 adaptune <args> --out <out>`` on CPU (gloo), or the same through
    ``accelerate launch`` (whose ``--multi_gpu`` mode is torchrun underneath; with no GPU we pick gloo)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    if launcher == "accelerate":
        start = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                 "--main_process_port", str(free_port())]  # fmt: skip
    else:
        start = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
        ]
    cmd = [*start, "-m", "adaptune.cli", *([command] if command else []), *args, "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def assert_same_files(a: Path, b: Path) -> None:
    for name in ("adapter.safetensors", "head.safetensors"):
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys(), name
        for key in x:
            torch.testing.assert_close(y[key], x[key], rtol=1e-5, atol=1e-6, msg=key)


def train_args(model: Path, data: Path, steps: int, precision: str = "fp32") -> list[str]:
    # fp32 by default: these tests check that the distributed math equals one process's to 1e-6, which bf16's
    # rounding (different per batch shape) cannot show; test_ddp_bf16 covers the low precision.
    return ["train", "--model", str(model), "--data", str(data), "--batch-size", "8", "--max-steps", str(steps),
            "--lr", "1e-2", "--max-length", "16", "--preset", "houlsby", "--save-every", "2",
            "--precision", precision]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "strategy"), [("torchrun", "ddp"), ("torchrun", "fsdp"), ("accelerate", "fsdp")])
def test_two_processes_equal_one(tmp_path: Path, launcher: str, strategy: str) -> None:
    model = make_model_dir(tmp_path, "bert", dropout=False)
    data = split_csv(tmp_path / "data.csv")
    # --eval-every: FSDP validation mid-run needs every rank (and leaves the sharded parameters in place).
    args = [*train_args(model, data, 5), "--eval-every", "2"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0

    done = torchrun([*args, "--strategy", strategy], tmp_path / strategy, launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("adaptune: step 5/5") == 1  # rank 0 logs; the other stays quiet
    assert_same_files(tmp_path / "single" / "adapter", tmp_path / strategy / "adapter")
    single = load_file(tmp_path / "single" / "adapter" / "adapter.safetensors")
    assert any(not torch.equal(single[k], torch.zeros_like(single[k])) for k in single if "up.weight" in k)


@pytest.mark.slow
def test_fsdp_resume_matches_uninterrupted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sharded run resumed from its step-4 checkpoint (full optimizer state re-sharded) ends where the
    uninterrupted one does; steps 5-6 still have a non-zero learning rate, so the Adam moments matter."""
    model = make_model_dir(tmp_path, "bert", dropout=False)
    data = split_csv(tmp_path / "data.csv")
    args = [*train_args(model, data, 6), "--strategy", "fsdp"]
    whole = tmp_path / "whole"
    assert (done := torchrun(args, whole)).returncode == 0, done.stderr[-3000:]

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoints" / "step-0000004", resumed / "checkpoints" / "step-0000004")
    done = torchrun([*args, "--resume"], resumed)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr and "at step 4" in done.stderr
    assert_same_files(whole / "adapter", resumed / "adapter")

    # A sharded checkpoint's optimizer state is keyed by name: a plain run refuses it with a clear error.
    single = tmp_path / "single"
    shutil.copytree(whole / "checkpoints", single / "checkpoints")
    capsys.readouterr()
    assert main([*train_args(model, data, 6), "--out", str(single), "--resume"]) == 2
    assert "written by an FSDP run: resume it with --strategy fsdp" in capsys.readouterr().err


@pytest.mark.slow
def test_fsdp_fusion_with_value_regulariser_matches_one_process(tmp_path: Path) -> None:
    """AdapterFusion under FSDP: the value regulariser reads W_v after its block's forward, when it is sharded;
    each rank must differentiate its own rows and the run must match one process."""
    model = make_model_dir(tmp_path, "bert", dropout=False)
    data = split_csv(tmp_path / "data.csv")
    base = ["--model", str(model), "--data", str(data), "--batch-size", "8", "--max-length", "16", "--save-every", "9",
            "--precision", "fp32"]  # fmt: skip
    for seed in ("1", "2"):
        assert main(["train", *base, "--max-steps", "2", "--seed", seed, "--out", str(tmp_path / f"a{seed}")]) == 0
    fuse = ["fuse", *base, "--max-steps", "4", "--lr", "5e-2", "--adapters", str(tmp_path / "a1" / "adapter"),
            str(tmp_path / "a2" / "adapter")]  # fmt: skip
    assert main([*fuse, "--fusion-reg", "5", "--out", str(tmp_path / "single")]) == 0
    assert main([*fuse, "--fusion-reg", "0", "--out", str(tmp_path / "noreg")]) == 0
    done = torchrun([*fuse[1:], "--fusion-reg", "5", "--strategy", "fsdp"], tmp_path / "fsdp", command="fuse")
    assert done.returncode == 0, done.stderr[-3000:]

    single = load_file(tmp_path / "single" / "fusion" / "fusion.safetensors")
    sharded = load_file(tmp_path / "fsdp" / "fusion" / "fusion.safetensors")
    noreg = load_file(tmp_path / "noreg" / "fusion" / "fusion.safetensors")
    for key in single:
        torch.testing.assert_close(sharded[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
    values = [k for k in single if k.endswith("value.weight")]
    assert values and any(not torch.allclose(single[k], noreg[k]) for k in values)  # the regulariser acted


@pytest.mark.slow
def test_ddp_bf16(tmp_path: Path) -> None:
    """DDP under the bf16 policy: every rank stores the frozen base in bf16 and trains fp32 adapters; the result is
    close to one process's bf16 run as a whole (not equal: bf16 rounds a batch of 4 unlike one of 8)."""
    model = make_model_dir(tmp_path, "bert", dropout=False)
    data = split_csv(tmp_path / "data.csv")
    args = train_args(model, data, 4, precision="bf16")
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    done = torchrun(args, tmp_path / "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "precision: bf16 requested" in done.stderr
    single = load_file(tmp_path / "single" / "adapter" / "adapter.safetensors")
    ddp = load_file(tmp_path / "ddp" / "adapter" / "adapter.safetensors")
    assert {t.dtype for t in ddp.values()} == {torch.float32}
    moved = [k for k in single if "up.weight" in k]
    assert moved and all(single[k].abs().max() > 1e-3 for k in moved)  # the adapters trained
    # Adam turns a tiny gradient's rounding into a full-size step, so compare the adapter as one vector.
    a = torch.cat([single[k].flatten() for k in sorted(single)])
    b = torch.cat([ddp[k].flatten() for k in sorted(single)])
    assert float((a - b).norm() / a.norm()) < 0.03  # measured 0.004
