"""Benchmark outputs: ``results.json`` (raw), ``results.md`` (tables + targets) and ``bench.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "write_outputs"]

# (label, kind, candidate, reference, model, batch, bound): the issue's targets, each a ratio that must be <= bound.
TARGETS = [
    ("pfeiffer training step vs full FT", "train", "pfeiffer", "full", "minilm", 16, 0.55),
    ("pfeiffer (base dropout off) training step vs full FT", "train", "pfeiffer+nodrop", "full", "minilm", 16, 0.55),
    ("pfeiffer training step vs adapters seq_bn", "train", "pfeiffer", "ah_seq_bn", "minilm", 16, 0.85),
    ("pfeiffer (no base dropout) vs adapters seq_bn", "train", "pfeiffer+nodrop", "ah_seq_bn", "minilm", 16, 0.85),
    ("pfeiffer top half vs full FT", "train", "pfeiffer_top_half", "full", "minilm", 16, 0.40),
    ("pfeiffer top half (no base dropout) vs full FT", "train", "pfeiffer_top_half+nodrop", "full", "minilm", 16, 0.4),
    ("fusion of 3 training step vs full FT", "train", "fusion3", "full", "minilm", 16, 0.60),
    ("fusion of 3 (base dropout off) vs full FT", "train", "fusion3+nodrop", "full", "minilm", 16, 0.60),
    ("pfeiffer peak training RSS vs full FT", "memory", "pfeiffer", "full", "minilm", 16, 0.60),
    ("pfeiffer (base dropout off) peak RSS vs full FT", "memory", "pfeiffer+nodrop", "full", "minilm", 16, 0.60),
    ("inference, one pfeiffer adapter vs base", "infer", "pfeiffer", "base", "minilm", 16, 1.02),
    ("inference, pfeiffer vs adapters seq_bn", "infer", "pfeiffer", "ah_seq_bn", "minilm", 16, 1.00),
    ("inference, houlsby vs base", "infer", "houlsby", "base", "minilm", 16, 1.05),
    ("inference, fusion of 3 vs base", "infer", "fusion3", "base", "minilm", 16, 1.15),
    ("inference, mixed batch of 8 adapters vs one adapter", "infer", "mixed8", "pfeiffer", "minilm", 8, 1.15),
    # issue 11, the precision policy (bf16 rows: `--only bf16`)
    ("bf16: pfeiffer training step vs fp32 full FT", "train", "pfeiffer@bf16", "full", "minilm", 16, 0.30),
    ("bf16: pfeiffer vs bf16-autocast full FT", "train", "pfeiffer@bf16", "full@bf16", "minilm", 16, 0.70),
    ("bf16: pfeiffer, base dropout off, vs fp32 full FT", "train", "pfeiffer+nodrop@bf16", "full", "minilm", 16, 0.22),
    ("bf16: pfeiffer vs peft LoRA (both bf16)", "train", "pfeiffer@bf16", "peft_lora@bf16", "minilm", 16, 0.85),
    ("bf16: pfeiffer vs adapters seq_bn (both bf16)", "train", "pfeiffer@bf16", "ah_seq_bn@bf16", "minilm", 16, 0.85),
    ("bf16: fusion of 3 training vs bf16 full FT", "train", "fusion3@bf16", "full@bf16", "minilm", 16, 0.60),
    ("bf16: pfeiffer peak training RSS vs fp32 full FT", "memory", "pfeiffer@bf16", "full", "minilm", 16, 0.45),
    ("bf16: inference, pfeiffer vs fp32 base", "infer", "pfeiffer@bf16", "base", "minilm", 16, 0.40),
    ("bf16: inference, pfeiffer vs bf16 base", "infer", "pfeiffer@bf16", "base@bf16", "minilm", 16, 1.02),
    ("bf16: inference, fusion of 3 vs bf16 base", "infer", "fusion3@bf16", "base@bf16", "minilm", 16, 1.15),
    # issue 14, other methods against peft (`--only methods`)
    ("LoRA training step vs peft LoRA", "train", "lora", "peft_lora", "minilm", 16, 1.00),
    ("LoRA inference (unmerged) vs peft LoRA", "infer", "lora", "peft_lora", "minilm", 16, 1.00),
    ("LoRA merged inference vs base", "infer", "lora_merged", "base", "minilm", 16, 1.01),
    ("(IA)3 training step vs peft (IA)3", "train", "ia3", "peft_ia3", "minilm", 16, 1.00),
    ("(IA)3 inference vs peft (IA)3", "infer", "ia3", "peft_ia3", "minilm", 16, 1.00),
    ("bf16: LoRA training step vs peft LoRA", "train", "lora@bf16", "peft_lora@bf16", "minilm", 16, 1.00),
    ("bf16: LoRA inference vs peft LoRA", "infer", "lora@bf16", "peft_lora@bf16", "minilm", 16, 1.00),
    ("bf16: LoRA merged inference vs base", "infer", "lora_merged@bf16", "base@bf16", "minilm", 16, 1.01),
    ("bf16: (IA)3 training step vs peft (IA)3", "train", "ia3@bf16", "peft_ia3@bf16", "minilm", 16, 1.00),
    ("bf16: (IA)3 inference vs peft (IA)3", "infer", "ia3@bf16", "peft_ia3@bf16", "minilm", 16, 1.00),
]


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "skipped" not in r]


def _memory_ratio(jobs: list[dict[str, Any]], r: dict[str, Any]) -> float | None:
    """Peak RSS over full fine-tuning's peak in the same venv and model."""
    full = [
        j
        for j in _ok(jobs)
        if j["kind"] == "memory" and j["cand"] == "full" and j["model"] == r["model"] and j["venv"] == r["venv"]
    ]
    return r["peak_rss_mb"] / full[0]["peak_rss_mb"] if full else None


def measured(jobs: list[dict[str, Any]], kind: str, cand: str, ref: str | None, model: str, bs: int) -> float | None:
    """The measured ratio for a target, or None if that job did not run."""
    for r in _ok(jobs):
        if r["kind"] != kind or r["cand"] != cand or r["model"] != model or r["batch"] != bs:
            continue
        if kind == "memory":
            return _memory_ratio(jobs, r)
        if r["ref"] == ref:
            return r["ratio"]
    return None


def _ratio(r: dict[str, Any]) -> str:
    return f"{r['ratio']:.3f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _library(cand: str) -> str:
    if cand in ("full", "base"):
        return "-"  # the plain Transformers model: the reference, nobody's adapters
    return "adapters" if cand.startswith("ah_") else "peft" if cand.startswith("peft") else "adaptune"


def _label(r: dict[str, Any]) -> str:
    """Row name; the AdapterHub venv's own full-FT reference (Transformers 4.57) is marked as such."""
    return f"{r['cand']} (adapters venv)" if r["cand"] == "full" and r.get("venv") == "adapters" else r["cand"]


def _markdown(results: dict[str, Any]) -> str:
    jobs = results["jobs"]
    o = results["options"]
    lines = [
        f"Benchmark started {results['started']}; {o['threads']} threads, fp32, warm-up {o['warmup']} pairs, "
        f"median of {o['pairs']} paired steps (A B A B ...); each row its own process.",
        "",
    ]
    if results.get("appended"):
        lines += [f"Rows added or re-measured later with --append: {', '.join(results['appended'])}.", ""]
    versions = next((r["versions"] for r in _ok(jobs) if r.get("venv") == "main" and "versions" in r), {})
    ah_versions = next((r["versions"] for r in _ok(jobs) if r.get("venv") == "adapters" and "versions" in r), {})
    lines += [f"Main venv: {versions}. AdapterHub venv: {ah_versions or 'not run'}.", ""]
    lines += ["## Targets", "", "| target | measured | bound | |", "|---|---|---|---|"]
    for label, *key, bound in TARGETS:
        got = measured(jobs, *key)
        verdict = "not run" if got is None else ("met" if got <= bound else f"missed by {got - bound:.3f}")
        lines.append(f"| {label} | {'-' if got is None else f'{got:.3f}'} | ≤ {bound} | {verdict} |")
    for model in ("minilm", "smollm2", "tiny"):
        train = [r for r in _ok(jobs) if r["kind"] == "train" and r["model"] == model]
        infer = [r for r in _ok(jobs) if r["kind"] == "infer" and r["model"] == model]
        mem = [r for r in _ok(jobs) if r["kind"] == "memory" and r["model"] == model]
        if not (train or infer or mem):
            continue
        shape = f"batch {(train or infer or mem)[0]['batch']} × {(train or infer or mem)[0]['length']}"
        lines += ["", f"## {model}", ""]
        if train:
            lines += [
                f"Training step (forward + backward + AdamW), {shape}:",
                "",
                "| config | library | reference | s/step | reference s/step | ratio (min–max) |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['cand']} | {_library(r['cand'])} | {r['ref']} | {r['cand_s']:.3f} | {r['ref_s']:.3f} | "
                f"{_ratio(r)} |"
                for r in train
            ]
        if infer:
            lines += [
                "",
                "Inference (eval, no grad):",
                "",
                "| setup | library | batch | reference | s/batch | ratio (min–max) |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {r['cand']} | {_library(r['cand'])} | {r['batch']} | {r['ref']} | {r['cand_s']:.4f} | "
                f"{_ratio(r)} |"
                for r in infer
            ]
        if mem:
            lines += [
                "",
                "Memory (3 training steps, one configuration per process) and size:",
                "",
                "| config | library | peak RSS MB | vs full FT | after load MB | trainable params | saved |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in mem:
                ratio = _memory_ratio(jobs, r)
                lines.append(
                    f"| {_label(r)} | {_library(r['cand'])} | {r['peak_rss_mb']:.0f} | "
                    f"{'-' if ratio is None else f'{ratio:.3f}'} | {r['loaded_rss_mb']:.0f} | "
                    f"{r['trainable_params']:,} | {_size(r['saved_bytes'])} |"
                )
    skipped = [r for r in jobs if "skipped" in r]
    if skipped:
        lines += ["", "Skipped:", ""]
        lines += [f"- {r['kind']} {r['cand']} ({r['model']}): {r['skipped']}" for r in skipped]
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    jobs = _ok(results["jobs"])
    panels = [
        (
            "training step / full FT (MiniLM)",
            [r for r in jobs if r["kind"] == "train" and r["ref"] == "full" and r["model"] in ("minilm", "tiny")],
            "ratio",
            0.55,
        ),
        (
            "inference / base (MiniLM, batch 16)",
            [r for r in jobs if r["kind"] == "infer" and r["ref"] == "base" and r["batch"] in (16, 2)],
            "ratio",
            1.02,
        ),
        (
            "peak training RSS / full FT (MiniLM)",
            [r for r in jobs if r["kind"] == "memory" and r["model"] in ("minilm", "tiny")],
            "memory",
            0.6,
        ),
    ]
    colors = {"adaptune": "tab:blue", "peft": "tab:orange", "adapters": "tab:gray", "-": "black"}
    fig = Figure(figsize=(15, 6), layout="constrained")
    for ax, (title, rows, kind, bound) in zip(fig.subplots(1, 3), panels, strict=True):
        values = [r["ratio"] if kind == "ratio" else (_memory_ratio(results["jobs"], r) or 0.0) for r in rows]
        ax.barh(range(len(rows)), values, color=[colors[_library(r["cand"])] for r in rows])
        ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(bound, color="tab:red", linestyle="--", linewidth=1, label=f"target {bound}")
        ax.axvline(1.0, color="black", linewidth=0.5)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "adaptune (blue), peft (orange), AdapterHub adapters (gray), full FT (black): paired ratios, lower is better"
    )
    fig.savefig(path, dpi=110)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """Write the three files atomically (temp file + rename)."""
    from ..util import atomic_write, write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", _markdown(results))
    if _ok(results["jobs"]):
        atomic_write(out / "bench.png", lambda tmp: _plot(results, tmp))
