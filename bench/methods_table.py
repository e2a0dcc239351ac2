"""Collect the "Which method?" runs (one folder per seed holding one sub-folder per method, as `adaptune compare
--methods ...` writes them) into docs/results/methods.md, one table per dataset:

    .venv/bin/python bench/methods_table.py rotten_tomatoes=runs/methods-s1,runs/methods-s2,... 'sarcasm*=...'

(a trailing * marks runs made while other jobs shared the CPU: their timings are flagged as not comparable)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["full-finetune", "pfeiffer", "lora", "ia3", "compacter", "prefix", "prompt", "mix-mam", "mix-unipelt"]
POOLER = 147_840  # bert.pooler of MiniLM (384 x 384 + 384), trained with every adapter as in the demo
HIDDEN = 384
COMMAND = (
    "`adaptune compare --model minilm --data DATA --methods bottleneck lora ia3 compacter prefix prompt --presets "
    "pfeiffer --max-steps 150 --batch-size 32 --max-length 64 --adapter-lr 3e-3 --train-modules bert.pooler --seed S` "
    "(full fine-tuning: lr 5e-5; the same `adaptune train` commands, one per method, for the runs made one at a "
    "time), precision auto (bf16 frozen base on this CPU), test split. Every adapter run also trains the pooler and "
    "the classifier, as the demo does; 'method params' excludes them. Method defaults: pfeiffer bottleneck "
    "(reduction 16), LoRA rank 8 alpha 8 on q and v, (IA)³ on k, v and the FFN, Compacter n=4 rank 1 (Houlsby "
    "placement), prefix 30 (reparameterised), prompt 20 tokens; mixes: MAM = prefix 30 + parallel bottleneck, "
    "UniPELT-like = LoRA + prefix 10 + gated pfeiffer. One learning rate for every method: no per-method tuning."
)


def table(dataset: str, folders: list[Path], shared: bool) -> list[str]:
    runs: dict[str, list[dict]] = {}
    for folder in folders:
        for name in ORDER:
            metrics = folder / name / "metrics.json"
            if metrics.is_file():
                runs.setdefault(name, []).append(json.loads(metrics.read_text()))
    # The classifier's size depends on the label count, which the run's task.json records.
    labels = len(json.loads((folders[0] / "pfeiffer" / "adapter" / "task.json").read_text())["labels"])
    lines = [
        f"## {dataset}",
        "",
        "| method | method params | saved MB | s/step | peak RSS MB | accuracy per seed | mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        rs = runs.get(name)
        if not rs:
            continue
        accs = [r["test_accuracy"] for r in rs]
        extra = 0 if name == "full-finetune" else POOLER + (HIDDEN + 1) * labels
        lines.append(
            f"| {name} | {rs[0]['trainable_params'] - extra:,} | {rs[0]['saved_bytes'] / 1e6:.2f} | "
            f"{statistics.mean(r['step_time_s'] for r in rs):.2f} | {max(r['peak_rss_mb'] for r in rs):,.0f} | "
            f"{' / '.join(f'{a:.4f}' for a in accs)} | {statistics.mean(accs):.4f} |"
        )
    test = runs["pfeiffer"][0]["test_examples"]
    note = f"Test examples: {test:,}; seeds: {', '.join(f.name for f in folders)}."
    if shared:  # honest about what the timing column can say
        note += (
            " These runs shared the 2 cores with other jobs (one torch thread each): s/step and peak RSS are not "
            "comparable between rows; see Rotten Tomatoes for timings on a quiet machine."
        )
    return [*lines, "", note, ""]


def main() -> int:
    lines = ["# Which method? MiniLM, same budget", "", COMMAND, ""]
    for arg in sys.argv[1:]:
        dataset, _, folders = arg.partition("=")
        found = [Path(f) for f in folders.split(",") if Path(f).is_dir()]
        lines += table(dataset.rstrip("*"), found, shared=dataset.endswith("*"))
    out = ROOT / "docs" / "results" / "methods.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
