"""One benchmark measurement in a fresh process; prints one JSON line.

    python -m adaptune.benchmark.worker '{"kind": "train", "ref": "full", "cand": "pfeiffer", ...}'

Kinds:
- ``train`` / ``infer``: paired timing. The reference and the candidate step in turn, A B A B ..., in this
  process; the result is the median of the per-pair ratios candidate / reference (a shared machine drifts
  10-20% between rounds, a pair sees the same conditions).
- ``memory``: one configuration alone (so no other configuration's peak hides in it): peak RSS over a few
  training steps, the RSS after loading, trainable parameters and the saved size.

Run by ``adaptune bench``, possibly under another venv's interpreter (AdapterHub needs Transformers 4.57).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
from typing import Any

import torch

from .workloads import batch, build, infer_step, precision_of, saved_bytes, train_step


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def paired(job: dict[str, Any]) -> dict[str, Any]:
    """Median candidate/reference ratio over ``pairs`` interleaved steps after ``warmup`` pairs."""
    model, bs, length = job["model"], job["batch"], job["length"]
    train = job["kind"] == "train"
    ref, cand = build(job["ref"], model, bs), build(job["cand"], model, bs)
    pa, pb = precision_of(job["ref"]), precision_of(job["cand"])
    inputs = batch(model, bs, length, labels=train)
    if train:
        opts = [_optimizer(ref), _optimizer(cand)]
        steps = [lambda: train_step(ref, opts[0], inputs, pa), lambda: train_step(cand, opts[1], inputs, pb)]
    else:
        ref.eval(), cand.eval()
        steps = [lambda: infer_step(ref, inputs, pa), lambda: infer_step(cand, inputs, pb)]
    for _ in range(job["warmup"]):
        steps[0](), steps[1]()
    a_times, b_times = [], []
    for _ in range(job["pairs"]):
        a_times.append(steps[0]())
        b_times.append(steps[1]())
    ratios = [b / a for a, b in zip(a_times, b_times, strict=True)]
    return {
        **job,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ref_s": statistics.median(a_times),
        "cand_s": statistics.median(b_times),
    }


def memory(job: dict[str, Any]) -> dict[str, Any]:
    model = build(job["cand"], job["model"], job["batch"])
    loaded = _rss_mb()
    opt = _optimizer(model)
    inputs = batch(job["model"], job["batch"], job["length"])
    for _ in range(3):
        train_step(model, opt, inputs, precision_of(job["cand"]))
    peak = _rss_mb()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        size = saved_bytes(model, job["cand"], tmp)
    return {
        **job,
        "peak_rss_mb": peak,
        "loaded_rss_mb": loaded,
        "trainable_params": trainable,
        "total_params": total,
        "saved_bytes": size,
    }


def main(argv: list[str] | None = None) -> None:
    job = json.loads((argv or sys.argv[1:])[0])
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    result = memory(job) if job["kind"] == "memory" else paired(job)
    result["versions"] = _versions()
    print(json.dumps(result))


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "adapters", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


if __name__ == "__main__":
    main()
