"""Training-step, inference and memory benchmarks on the real MiniLM (run by hand; never a unit test).

    .venv/bin/python bench/bench.py                 # everything, results to bench/results/
    .venv/bin/python bench/bench.py --only train    # one part

Timing is paired: the reference (full fine-tuning, or the bare base model for inference) and the candidate run
step by step, A B A B ..., in one process, and the result is the median of the per-pair ratios (this machine
is shared and noisy; unpaired medians drift 10-20% between rounds). Peak memory is measured per
configuration in its own process (``ru_maxrss``), so one configuration's peak never hides another's.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
TRAIN_CONFIGS = ["pfeiffer", "houlsby", "parallel", "pfeiffer_top_half", "fusion3"]


def minilm(num_labels: int = 2) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    from adaptune.assets import resolve_model

    return AutoModelForSequenceClassification.from_pretrained(resolve_model("minilm"), num_labels=num_labels)


def build(config: str) -> torch.nn.Module:
    """A MiniLM classifier set up to train as ``config`` (``full``: every weight)."""
    import adaptune
    from adaptune import AdapterConfig

    torch.manual_seed(0)
    model = minilm()
    if config == "full":
        model.requires_grad_(True)
        return model
    if config == "fusion3":
        for name in ("a", "b", "c"):
            adaptune.add_adapter(model, name, AdapterConfig.pfeiffer(init="normal"))
        fuse = adaptune.add_fusion(model, ["a", "b", "c"])
        adaptune.train_fusion(model, fuse)
        return model
    cfg = {
        "pfeiffer": AdapterConfig.pfeiffer(),
        "houlsby": AdapterConfig.houlsby(),
        "parallel": AdapterConfig.parallel(),
        "pfeiffer_top_half": AdapterConfig.pfeiffer(layers="top-half"),
    }[config]
    adaptune.add_adapter(model, "x", cfg)
    adaptune.train_adapter(model, "x")
    return model


def batch(bs: int, length: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 29000, (bs, length), generator=g),
        "attention_mask": torch.ones(bs, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (bs,), generator=g),
    }


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, inputs: dict[str, torch.Tensor]) -> float:
    t0 = time.perf_counter()
    model(**inputs).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def paired_train(config: str, bs: int, length: int, steps: int, warmup: int) -> dict[str, Any]:
    ref, cand = build("full").train(), build(config).train()
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for m in (ref, cand)]
    inputs = batch(bs, length)
    for _ in range(warmup):
        train_step(ref, opts[0], inputs)
        train_step(cand, opts[1], inputs)
    ratios, a_times, b_times = [], [], []
    for _ in range(steps):
        a = train_step(ref, opts[0], inputs)
        b = train_step(cand, opts[1], inputs)
        ratios.append(b / a)
        a_times.append(a)
        b_times.append(b)
    trainable = sum(p.numel() for p in cand.parameters() if p.requires_grad)
    return {"config": config, "ratio_vs_full": statistics.median(ratios), "full_s": statistics.median(a_times),
            "candidate_s": statistics.median(b_times), "trainable_params": trainable}  # fmt: skip


@torch.no_grad()
def paired_infer(setup: str, bs: int, length: int, steps: int, warmup: int) -> dict[str, Any]:
    """Base model vs the same model with ``setup`` active (inference, eval mode)."""
    import adaptune
    from adaptune import AdapterConfig, PerExample

    model = minilm().eval()
    names = [f"a{i}" for i in range(8)]
    for i, name in enumerate(names):
        preset = AdapterConfig.houlsby if setup == "houlsby" else AdapterConfig.pfeiffer
        adaptune.add_adapter(model, name, preset(init="normal"), activate=False)
        if setup in ("pfeiffer", "houlsby") and i == 0:
            break
    if setup == "fusion3":
        active: Any = adaptune.add_fusion(model, names[:3], activate=False)
    elif setup == "mixed8":
        active = PerExample([names[i % 8] for i in range(bs)])
    else:
        active = names[0]
    inputs = {k: v for k, v in batch(bs, length).items() if k != "labels"}

    def run(on: bool) -> float:
        adaptune.set_active(model, active if on else (names[0] if setup == "mixed8" else None))
        t0 = time.perf_counter()
        model(**inputs)
        return time.perf_counter() - t0

    for _ in range(warmup):
        run(False)
        run(True)
    ratios = [run(True) / run(False) for _ in range(steps)]
    ref = "one adapter" if setup == "mixed8" else "base"
    return {"setup": setup, "batch": bs, "ratio": statistics.median(ratios), "reference": ref}


def peak_memory(config: str, bs: int, length: int, steps: int) -> dict[str, Any]:
    model = build(config).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs = batch(bs, length)
    for _ in range(steps):
        train_step(model, opt, inputs)
    return {"config": config, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(kind: str, arg: str, a: argparse.Namespace) -> dict[str, Any]:
    """Run one measurement in a fresh process (clean peak memory, no state shared between configs)."""
    cmd = [sys.executable, __file__, "--child", kind, arg, "--batch", str(a.batch), "--length", str(a.length),
           "--steps", str(a.steps), "--warmup", str(a.warmup)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="measured pairs")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", choices=("train", "infer", "memory"))
    p.add_argument("--out", default=str(ROOT / "results"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(2)
    if a.child:
        kind, arg = a.child
        if kind == "train":
            print(json.dumps(paired_train(arg, a.batch, a.length, a.steps, a.warmup)))
        elif kind == "infer":
            bs = int(arg.split(":")[1])
            print(json.dumps(paired_infer(arg.split(":")[0], bs, a.length, a.steps, a.warmup)))
        else:
            print(json.dumps(peak_memory(arg, a.batch, a.length, max(3, a.warmup + 1))))
        return

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"batch": a.batch, "length": a.length, "pairs": a.steps, "threads": 2,
                               "torch": torch.__version__}  # fmt: skip
    if a.only in (None, "train"):
        results["train"] = [child("train", c, a) for c in TRAIN_CONFIGS]
    if a.only in (None, "memory"):
        results["memory"] = [child("memory", c, a) for c in ["full", *TRAIN_CONFIGS]]
    if a.only in (None, "infer"):
        setups = ["pfeiffer:16", "pfeiffer:1", "houlsby:16", "fusion3:16", "mixed8:8"]
        results["infer"] = [child("infer", s, a) for s in setups]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"MiniLM, batch {a.batch} x {a.length}, fp32, 2 threads, median of {a.steps} paired steps", ""]
    if "train" in results:
        lines += [
            "| training config | trainable params | s/step | full FT s/step | ratio vs full FT |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {r['config']} | {r['trainable_params']:,} | {r['candidate_s']:.3f} | {r['full_s']:.3f} | "
                  f"{r['ratio_vs_full']:.3f} |" for r in results["train"]]  # fmt: skip
    if "memory" in results:
        full = next(r["peak_rss_mb"] for r in results["memory"] if r["config"] == "full")
        lines += ["", "| config | peak RSS MB | vs full FT |", "|---|---|---|"]
        lines += [
            f"| {r['config']} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / full:.3f} |" for r in results["memory"]
        ]
    if "infer" in results:
        lines += ["", "| inference setup | batch | latency ratio | reference |", "|---|---|---|---|"]
        lines += [f"| {r['setup']} | {r['batch']} | {r['ratio']:.3f} | {r['reference']} |" for r in results["infer"]]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
