"""The MAD-X experiment: zero-shot Chinese sentiment from English training, with language adapters on Gemma 3 270M.

Per seed (1, 2), all through the CLI, outputs under runs/xl/ (each step is skipped when its result exists, so an
interrupted run resumes):

1. language adapters (``--task language-modeling``, MAD-X mix: pfeiffer bottleneck + invertible coupling):
   ``lang_en`` on Rotten Tomatoes texts (train split), ``lang_zh`` on chnsenti texts (train split only: the test
   reviews scored below are never seen);
2. task adapter on English sentiment (rotten_tomatoes) trained on top of the frozen ``lang_en`` (``--stack-on``);
3. baselines: English full fine-tuning, and a few-shot reference: a task adapter on 300 labelled chnsenti train
   reviews on top of ``lang_zh``;
4. evaluation on the same 300 chnsenti test reviews (a fixed, content-keyed subset): Stack(lang_zh, task) vs
   Stack(lang_en, task) vs the same task adapter without a language adapter vs full fine-tuning vs few-shot.

Then docs/results/cross_lingual.md and docs/results/cross_lingual.png. Needs ``make gemma3`` (optional model).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cross_lingual.py [--seeds 1 2] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "xl"  # --out
CLI = [sys.executable, "-m", "adaptune.cli"]
COMMON = ["--model", "gemma3", "--max-length", "48"]
EVAL_LIMIT = 300  # chnsenti test reviews scored (of 3,781); --eval-limit


def _threads() -> str:
    """One torch thread while another training job shares the CPU (two threads, each waiting for a core the other
    job holds, ran ~10x slower here: 35-45 s vs 3.3 s per Gemma step), else one per core."""
    busy = subprocess.run(["pgrep", "-f", "adaptune.cli train .*runs/methods-"], capture_output=True).stdout.strip()
    return "1" if busy else str(os.cpu_count() or 1)


def run(argv: list[str], log: Path) -> None:
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": _threads()}
    with log.open("w") as f:
        done = subprocess.run([*CLI, *argv], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    print(f"  {' '.join(argv[:2])} -> {log.name}: rc {done.returncode}, {time.time() - start:.0f} s", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)} (see {log})")


def train(out: Path, argv: list[str]) -> Path:
    if not (out / "metrics.json").is_file():
        run(["train", *COMMON, "--out", str(out), *argv], out.with_suffix(".log"))
    return out


def zh_test_file() -> Path:
    """The chnsenti test reviews scored (a fixed, content-keyed subset of EVAL_LIMIT) as a CSV whose labels are the
    English task's names (pos -> fresh, neg -> rotten): the zero-shot task adapters only know those."""
    out = OUT / f"chnsenti_test_{EVAL_LIMIT}.csv"
    if not out.is_file():
        import csv

        from adaptune.training.data.datasets import load_dataset

        rows = [
            (e.text, {"pos": "fresh", "neg": "rotten"}[e.label])
            for e in load_dataset("chnsenti", limit=EVAL_LIMIT).test
        ]
        OUT.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "label"), *rows])
    return out


def evaluate(name: str, setup: list[str], seed_dir: Path, english_labels: bool = True) -> float:
    result = seed_dir / f"eval_{name}.json"
    if not result.is_file():
        log = seed_dir / f"eval_{name}.log"
        if english_labels:
            data = ["--data", str(zh_test_file())]
        else:  # the same reviews with their own labels (the few-shot adapter learned pos / neg)
            data = ["--data", "chnsenti", "--split", "test", "--limit", str(EVAL_LIMIT)]
        run(["eval", *setup, *data, "--json"], log)
        result.write_text(log.read_text().strip().splitlines()[-1])
    return float(json.loads(result.read_text())["accuracy"])


def one_seed(seed: int, steps: int) -> dict[str, float]:
    d = OUT / f"s{seed}"
    d.mkdir(parents=True, exist_ok=True)
    s = ["--seed", str(seed)]
    lang = ["--task", "language-modeling", "--method", "mix", "--mix-preset", "madx", "--batch-size", "8"]
    lang += ["--max-steps", str(steps), "--lr", "1e-3", "--limit", "200", *s]
    en = train(d / "lang_en", [*lang, "--data", "rotten_tomatoes", "--name", "lang_en"]) / "adapter"
    zh = train(d / "lang_zh", [*lang, "--data", "chnsenti", "--name", "lang_zh"]) / "adapter"
    task = ["--data", "rotten_tomatoes", "--batch-size", "16", "--max-steps", str(steps), "--lr", "1e-3", *s]
    task += ["--limit", "600", "--name", "task"]
    stacked = train(d / "task_on_en", [*task, "--stack-on", str(en)]) / "adapter"
    full = ["--data", "rotten_tomatoes", "--batch-size", "16", "--max-steps", str(steps // 2), "--lr", "2e-5", *s]
    ft = train(d / "full_ft", [*full, "--limit", "600", "--full-finetune"]) / "model"
    few = [
        "--data",
        "chnsenti",
        "--limit",
        "300",
        "--batch-size",
        "16",
        "--max-steps",
        str(steps // 2),
        "--lr",
        "1e-3",
    ]
    few_shot = train(d / "few_shot_zh", [*few, *s, "--name", "task", "--stack-on", str(zh)]) / "adapter"
    results = {
        "Stack(lang_zh, task)": evaluate(
            "zh_task", ["--adapter", str(stacked), str(zh), "--setup", "Stack(lang_zh, task)"], d
        ),
        "Stack(lang_en, task)": evaluate(
            "en_task", ["--adapter", str(stacked), str(en), "--setup", "Stack(lang_en, task)"], d
        ),
        "task adapter alone (no language adapter)": evaluate("alone", ["--adapter", str(stacked)], d),
        "full fine-tuning (EN)": evaluate("full_ft", ["--model", str(ft)], d),
        "few-shot: 300 zh labels on lang_zh": evaluate(
            "few_shot", ["--adapter", str(few_shot), str(zh), "--setup", "Stack(lang_zh, task)"], d, False
        ),
    }
    for name, folder in (("task_on_en", "task_on_en"), ("full_ft", "full_ft")):
        results[f"EN test ({name})"] = json.loads((d / folder / "metrics.json").read_text())["test_accuracy"]
    for lang_name in ("lang_en", "lang_zh"):
        results[f"{lang_name} test perplexity"] = json.loads((d / lang_name / "metrics.json").read_text())[
            "test_perplexity"
        ]
    (d / "results.json").write_text(json.dumps(results, indent=2))
    return results


def base_perplexity(data: str) -> float:
    """The bare model's perplexity on the language adapters' held-out texts (same 200-per-split subset, length)."""
    result = OUT / f"base_lm_{data}.json"
    if not result.is_file():
        log = OUT / f"base_lm_{data}.log"
        argv = ["eval", "--model", "gemma3", "--task", "language-modeling", "--data", data, "--split", "test"]
        run([*argv, "--limit", "200", "--max-length", "48", "--json"], log)
        result.write_text(log.read_text().strip().splitlines()[-1])
    return float(json.loads(result.read_text())["perplexity"])


def report(per_seed: dict[int, dict[str, float]], steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(next(iter(per_seed.values())))
    lines = [
        "# Cross-lingual transfer with language adapters (MAD-X) on Gemma 3 270M",
        "",
        f"Zero-shot Chinese sentiment (chnsenti test, the same {EVAL_LIMIT} reviews for every row) from a task "
        "adapter trained on English reviews (rotten_tomatoes). Made by `bench/cross_lingual.py`, every step through "
        "the CLI, precision auto (bf16 frozen base), max length 48, a CPU-sized run (2 cores shared with other jobs): "
        "far shorter training than the MAD-X paper's.",
        "",
        f"- Language adapters ({steps} steps, batch 8, lr 1e-3, causal-LM objective): MAD-X mix = pfeiffer "
        "bottleneck (reduction 2) + invertible NICE coupling; `lang_en` on 200 Rotten Tomatoes train texts, "
        "`lang_zh` on 200 chnsenti train texts (the test reviews are never seen).",
        f"- Task adapters ({steps} steps, batch 16, lr 1e-3, 600 English reviews): pfeiffer; the head reads the "
        "last real token. `task` trains on top of the frozen `lang_en` (`--stack-on`); 'alone' is that same task "
        "adapter evaluated without any language adapter.",
        f"- Full fine-tuning: {steps // 2} steps, lr 2e-5, same English data. Few-shot reference: a task adapter on "
        f"300 labelled chnsenti train reviews on top of `lang_zh`, {steps // 2} steps.",
        "",
        "| setup | " + " | ".join(f"seed {s}" for s in per_seed) + " | mean | spread |",
        "|---|" + "---|" * (len(per_seed) + 2),
    ]
    for k in keys:
        vals = [per_seed[s][k] for s in per_seed]
        spread = max(vals) - min(vals)
        lines.append(
            f"| {k} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {statistics.mean(vals):.4f} | {spread:.4f} |"
        )
    labels = [row.rsplit(",", 1)[1] for row in zh_test_file().read_text(encoding="utf-8").splitlines()[1:]]
    majority = max(labels.count(lab) for lab in set(labels)) / len(labels)
    lines += [
        "",
        f"Rows without 'EN test' or 'perplexity' are chnsenti accuracy; always answering the majority class scores "
        f"{majority:.4f}. 'EN test' rows are Rotten Tomatoes test accuracy (600 reviews); perplexities are on each "
        "language adapter's own held-out texts (200 test texts, 48 tokens), where the bare Gemma 3 scores "
        f"{base_perplexity('rotten_tomatoes'):.1f} (en) and {base_perplexity('chnsenti'):.1f} (zh).",
        "",
    ]
    out = ROOT / "docs" / "results"
    (out / "cross_lingual.md").write_text("\n".join(lines))
    zh_keys = [k for k in keys if not k.startswith("EN test") and "perplexity" not in k]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, k in enumerate(zh_keys):
        vals = [per_seed[s][k] for s in per_seed]
        ax.barh(i, statistics.mean(vals), color="#4c72b0" if "few" not in k else "#aaaaaa")
        ax.plot(vals, [i] * len(vals), "k.", markersize=8)
    ax.axvline(majority, color="#c44e52", linestyle="--", linewidth=1, label=f"majority class {majority:.3f}")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(zh_keys)), zh_keys)
    ax.set_xlabel("chnsenti test accuracy (bars: mean, dots: seeds)")
    ax.set_xlim(0.4, 1.0)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "cross_lingual.png", dpi=120)
    print((out / "cross_lingual.md").read_text())


def main() -> int:
    global OUT, EVAL_LIMIT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--eval-limit", type=int, default=EVAL_LIMIT)
    p.add_argument("--no-report", action="store_true", help="skip writing docs/results (smoke runs)")
    a = p.parse_args()
    OUT, EVAL_LIMIT = a.out, a.eval_limit
    per_seed = {}
    for seed in a.seeds:
        print(f"seed {seed}", flush=True)
        per_seed[seed] = one_seed(seed, a.steps)
    if not a.no_report:
        report(per_seed, a.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
