"""The GPU check of issue 7: SmolLM2 adapter training and inference tokens/s against peft LoRA (bf16).

Prepared for a machine with a CUDA GPU; CI never runs it on one. One short run (about a minute of device time):

    .venv/bin/python bench/gpu.py --out bench/results/gpu.json               # cuda, bf16, SmolLM2-135M
    .venv/bin/python bench/gpu.py --device cpu --dtype float32 --model tiny  # a smoke test of the script

For each configuration (adaptune pfeiffer, peft LoRA r=8 on q/v, and the base model for inference) it times
training steps (forward + backward + AdamW) and forward passes, paired A B A B against the first
configuration, and greedy generation of 32 new tokens. Results: tokens/s per configuration and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from adaptune.benchmark.workloads import batch, build


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", choices=("smollm2", "tiny"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="bench/results/gpu.json")
    a = p.parse_args()
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    length = min(a.length, 8) if a.model == "tiny" else a.length
    inputs = {k: v.to(device) for k, v in batch(a.model, a.batch, length).items()}
    configs = ["pfeiffer", "peft_lora"]
    models = {c: build(c, a.model, a.batch).to(device=device, dtype=dtype) for c in configs}
    models["base"] = build("base", a.model, a.batch).to(device=device, dtype=dtype).eval()
    opts = {c: torch.optim.AdamW([q for q in models[c].parameters() if q.requires_grad], lr=1e-5) for c in configs}

    def train(c: str) -> None:
        models[c].train()
        models[c](**inputs).loss.backward()
        opts[c].step()
        opts[c].zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(c: str) -> None:
        models[c].eval()
        models[c](**{k: v for k, v in inputs.items() if k != "labels"})

    tokens = a.batch * length
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "dtype": a.dtype, "model": a.model, "batch": a.batch, "length": length}  # fmt: skip
    for kind, fn, names in (("train", train, configs), ("infer", infer, ["base", *configs])):
        for _ in range(2):  # warm-up: kernels, allocator, autotuning
            for c in names:
                fn(c)
        times: dict[str, list[float]] = {c: [] for c in names}
        for _ in range(a.steps):
            for c in names:
                times[c].append(_timed(lambda c=c, fn=fn: fn(c), device))
        result[kind] = {c: {"s": statistics.median(t), "tokens_per_s": tokens / statistics.median(t)}
                        for c, t in times.items()}  # fmt: skip
        first = names[0]
        for c in names[1:]:
            result[kind][c]["ratio_vs_" + first] = statistics.median(
                [x / y for x, y in zip(times[c], times[first], strict=True)]
            )
    if a.model != "tiny":  # greedy decoding, 32 new tokens
        prompt = inputs["input_ids"][:, :64]
        result["generate"] = {}
        for c in ["base", *configs]:
            models[c].eval()
            with torch.no_grad():
                s = _timed(lambda c=c: models[c].generate(prompt, max_new_tokens=32, min_new_tokens=32,
                                                          do_sample=False), device)  # fmt: skip
            result["generate"][c] = {"s": s, "new_tokens_per_s": a.batch * 32 / s}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
