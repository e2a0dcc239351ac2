"""The GPU check of issue 11: a 4-bit NF4 frozen base (bitsandbytes, QLoRA-style) with bottleneck adapters.

Prepared for a machine with a CUDA GPU and ``pip install bitsandbytes``; CI never runs it (it stops with a clear
message where either is missing). One short run, about a minute of device time:

    .venv/bin/python bench/gpu_nf4.py --out bench/results/gpu_nf4.json

It trains a pfeiffer adapter on SmolLM2-135M twice, in turn step by step: over a bf16 base (adaptune's precision
policy) and over an NF4 base (bitsandbytes ``Linear4bit``, bf16 compute), and reports tokens/s, the step-time ratio,
peak CUDA memory and the loss of the first steps of each (they must be close: same data, same init).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import adaptune
from adaptune.core.precision import apply_precision, autocast, resolve_precision
from adaptune.training.assets import resolve_model


def _model(quant: bool, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16}
    if quant:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        kwargs["device_map"] = {"": device.index or 0}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2"), **kwargs)
    if not quant:
        model.to(device)
    adaptune.add_adapter(model, "x", adaptune.AdapterConfig.pfeiffer())
    adaptune.train_adapter(model, "x")
    # frozen base stays as loaded (bf16 or NF4); the adapter keeps fp32 master weights
    apply_precision(model, resolve_precision("bf16", device))
    return model.train()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="bench/results/gpu_nf4.json")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_nf4: needs a CUDA GPU (bitsandbytes NF4 has no CPU training path)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise SystemExit("gpu_nf4: needs `pip install bitsandbytes`") from None
    device = torch.device("cuda")
    precision = resolve_precision("bf16", device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 29000, (a.batch, a.length), generator=g).to(device)
    models, weights_gib = {}, {}
    for name, quant in (("bf16", False), ("nf4", True)):
        before = torch.cuda.memory_allocated(device)
        models[name] = _model(quant, device)
        weights_gib[name] = (torch.cuda.memory_allocated(device) - before) / 2**30  # what each model holds
    opts = {k: torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    losses: dict[str, list[float]] = {k: [] for k in models}
    for step in range(a.steps + 2):  # 2 warm-up steps
        for k, m in models.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast(precision, device):
                loss = m(input_ids=ids, labels=ids).loss.float()
            loss.backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if step >= 2:
                times[k].append(time.perf_counter() - t0)
            losses[k].append(float(loss))
    tokens = a.batch * a.length
    result = {
        "device": torch.cuda.get_device_name(device),
        "batch": a.batch,
        "length": a.length,
        "tokens_per_s": {k: tokens / statistics.median(t) for k, t in times.items()},
        "nf4_step_over_bf16": statistics.median(x / y for x, y in zip(times["nf4"], times["bf16"], strict=True)),
        "model_memory_gib": weights_gib,
        "peak_memory_gib_both": torch.cuda.max_memory_allocated(device) / 2**30,
        "first_losses": {k: v[:4] for k, v in losses.items()},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
