"""Collect the "Which method?" runs (`adaptune compare --methods ...`, one output folder per seed) into
docs/results/methods.md:

    .venv/bin/python bench/methods_table.py runs/methods-s1 runs/methods-s2
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["full-finetune", "pfeiffer", "lora", "ia3", "compacter", "prefix", "prompt"]


def main() -> int:
    runs: dict[str, list[dict]] = {}
    for folder in map(Path, sys.argv[1:]):
        for name in ORDER:
            metrics = folder / name / "metrics.json"
            if metrics.is_file():
                runs.setdefault(name, []).append(json.loads(metrics.read_text()))
    lines = [
        "# Which method? MiniLM + Rotten Tomatoes, same budget",
        "",
        "`adaptune compare --model minilm --data rotten_tomatoes --methods bottleneck lora ia3 compacter prefix "
        "prompt "
        "--presets pfeiffer --max-steps 150 --batch-size 32 --max-length 64 --adapter-lr 3e-3 --train-modules "
        "bert.pooler --seed S` (full fine-tuning: lr 5e-5), precision auto (bf16 frozen base on this CPU), test split "
        "(1,243 reviews). Every adapter run also trains the pooler and the classifier (148,610 parameters), as the "
        "demo does; 'method params' excludes them. Method defaults: pfeiffer bottleneck (reduction 16), LoRA rank 8 "
        "alpha 8 on q and v, (IA)³ on k, v and the FFN, Compacter n=4 rank 1 (Houlsby placement), prefix 30 "
        "(reparameterised), prompt 20 tokens. One learning rate for every method: no per-method tuning.",
        "",
        "| method | method params | saved MB | s/step | peak RSS MB | accuracy per seed | mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ORDER:
        rs = runs.get(name)
        if not rs:
            continue
        accs = [r["test_accuracy"] for r in rs]
        extra = 0 if name == "full-finetune" else 148_610
        method_params = rs[0]["trainable_params"] - extra
        lines.append(
            f"| {name} | {method_params:,} | {rs[0]['saved_bytes'] / 1e6:.2f} | "
            f"{statistics.mean(r['step_time_s'] for r in rs):.2f} | {max(r['peak_rss_mb'] for r in rs):,.0f} | "
            f"{' / '.join(f'{a:.4f}' for a in accs)} | {statistics.mean(accs):.4f} |"
        )
    out = ROOT / "docs" / "results" / "methods.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
