"""``adaptune compare`` and ``adaptune sweep``: several training runs on the same data and budget.

Each run is its own ``adaptune train`` subprocess, so peak memory is measured per configuration and one
failing configuration does not take the others down. Results: ``results.json``, a markdown table and
plots in the output folder, summarised in ``report.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_compare_parser", "add_sweep_parser", "primary_metric", "run_compare", "run_sweep"]

PRESETS = ("pfeiffer", "houlsby", "parallel")


def primary_metric(task: str) -> tuple[str, bool]:
    """(metrics.json key, higher is better) used to rank runs of a task."""
    return ("test_accuracy", True) if task == "classification" else ("test_loss", False)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("classification", "qa", "causal-lm"), default="classification")
    p.add_argument("--model", default="minilm")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-steps", type=int, default=100, help="the same budget for every run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--limit", type=int, help="cap each split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapter-lr", type=float, default=1e-3)
    p.add_argument("--train-modules", nargs="+", default=[], help="extra modules trained with each adapter's head")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--target-column")


def add_compare_parser(sub: Any) -> None:
    """Register ``adaptune compare``."""
    p = sub.add_parser("compare", help="full fine-tuning vs adapter configs on the same data and budget")
    _common(p)
    p.add_argument("--presets", nargs="+", default=["pfeiffer"], choices=PRESETS)
    p.add_argument("--reduction-factor", type=float, default=16.0)
    p.add_argument("--full-lr", type=float, default=5e-5, help="learning rate for full fine-tuning")
    p.add_argument("--no-full", action="store_true", help="skip the full fine-tuning run")


def add_sweep_parser(sub: Any) -> None:
    """Register ``adaptune sweep``."""
    p = sub.add_parser("sweep", help="short runs over placements x layers x reduction factors")
    _common(p)
    p.add_argument("--placements", nargs="+", default=["attention", "ffn", "both", "parallel"])
    p.add_argument("--layer-sets", nargs="+", default=["all", "top-half", "last:2"])
    p.add_argument("--reduction-factors", nargs="+", type=float, default=[16.0, 64.0])


def _train_cmd(a: argparse.Namespace, out: Path, extra: list[str], lr: float) -> list[str]:
    cmd = [sys.executable, "-m", "adaptune.cli", "train", "--task", a.task, "--model", a.model, "--data", a.data]
    cmd += ["--out", str(out), "--max-steps", str(a.max_steps), "--batch-size", str(a.batch_size)]
    cmd += ["--max-length", str(a.max_length), "--seed", str(a.seed), "--lr", str(lr), "--eval-limit", "200"]
    cmd += ["--save-every", str(10**9), "--log-every", str(max(1, a.max_steps // 5))]
    for opt in ("limit", "text_column", "label_column", "target_column"):
        if getattr(a, opt, None) is not None:
            cmd += [f"--{opt.replace('_', '-')}", str(getattr(a, opt))]
    return cmd + extra


def _train_modules(a: argparse.Namespace) -> list[str]:
    return ["--train-modules", *a.train_modules] if a.train_modules else []


def _run(name: str, cmd: list[str], out: Path) -> dict[str, Any]:
    print(f"adaptune: [{name}] {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, check=False)
    metrics_file = out / "metrics.json"
    if done.returncode != 0 or not metrics_file.is_file():
        print(f"adaptune: [{name}] failed with status {done.returncode}", file=sys.stderr)
        return {"name": name, "error": f"exit {done.returncode}"}
    return {"name": name, **json.loads(metrics_file.read_text(encoding="utf-8"))}


def _row(r: dict[str, Any], key: str) -> dict[str, Any]:
    return {
        "config": r["name"],
        "trainable params": r.get("trainable_params"),
        "trainable %": r.get("trainable_percent"),
        "saved MB": (r["saved_bytes"] / 1e6) if r.get("saved_bytes") is not None else None,
        "s/step": r.get("step_time_s"),
        "peak RSS MB": r.get("peak_rss_mb"),
        key: r.get(key),
    }


def _finish(a: argparse.Namespace, title: str, runs: list[dict[str, Any]], pareto_plots: bool) -> int:
    from ..util import write_json_atomic, write_text_atomic
    from .report import markdown_table, pareto_front, plot_tradeoff, write_report

    out = Path(a.out)
    key, higher = primary_metric(a.task)
    ok = [r for r in runs if "error" not in r]
    write_json_atomic(out / "results.json", runs)
    rows = [_row(r, key) for r in runs]
    table = markdown_table(rows)
    write_text_atomic(out / "table.md", table + "\n")
    print(table)
    images: dict[str, Path] = {}
    notes = [f"{len(ok)}/{len(runs)} runs finished; budget {a.max_steps} steps x batch {a.batch_size}"]
    if pareto_plots and len(ok) > 1:
        pts = [
            {
                "name": r["name"],
                "params": r["trainable_params"],
                "step": r["step_time_s"],
                "score": r[key] if higher else -r[key],
            }
            for r in ok
        ]
        front = pareto_front(pts, minimize="params", maximize="score")
        front_t = pareto_front(pts, minimize="step", maximize="score")
        for r in pts:
            r["metric"] = r["score"] if higher else -r["score"]
        images["metric vs trainable parameters"] = plot_tradeoff(
            pts, out / "metric_vs_params.png", x="params", y="metric", pareto=front, title=f"{key} vs trainable params"
        )
        images["metric vs step time"] = plot_tradeoff(
            pts,
            out / "metric_vs_step_time.png",
            x="step",
            y="metric",
            pareto=front_t,
            logx=False,
            title=f"{key} vs seconds per step",
        )
        notes.append(f"Pareto-best (params vs {key}): {', '.join(front)}")
        notes.append(f"Pareto-best (step time vs {key}): {', '.join(front_t)}")
        print("\n".join(notes[1:]))
    best = sorted(ok, key=lambda r: r[key], reverse=higher)
    metrics = {"best": best[0]["name"] if best else None, key: best[0][key] if best else None}
    report = write_report(
        out, title=title, config=vars(a), metrics=metrics, tables={"runs": rows}, images=images, notes=notes
    )
    print(f"report: {report}")
    return 0 if ok else 1


def run_compare(a: argparse.Namespace) -> int:
    """Full fine-tuning vs adapter presets, same data, steps and batch size."""
    out = Path(a.out)
    runs = []
    if not a.no_full:
        runs.append(
            _run(
                "full-finetune",
                _train_cmd(a, out / "full-finetune", ["--full-finetune"], a.full_lr),
                out / "full-finetune",
            )
        )
    for preset in a.presets:
        extra = ["--preset", preset, "--reduction-factor", str(a.reduction_factor), *_train_modules(a)]
        runs.append(_run(preset, _train_cmd(a, out / preset, extra, a.adapter_lr), out / preset))
    return _finish(a, f"adaptune compare: {a.data} with {a.model}", runs, pareto_plots=False)


def run_sweep(a: argparse.Namespace) -> int:
    """Short runs over placements x layer sets x reduction factors; table, plots, Pareto-best configs."""
    out = Path(a.out)
    runs = []
    for placement, layers, rf in itertools.product(a.placements, a.layer_sets, a.reduction_factors):
        name = f"{placement}/{layers}/rf{rf:g}"
        folder = out / f"{placement}_{layers.replace(':', '')}_rf{rf:g}"
        preset = "houlsby" if placement == "both" else "parallel" if placement == "parallel" else "pfeiffer"
        extra = ["--preset", preset, "--placement", placement, "--layers", layers, "--reduction-factor", str(rf)]
        extra += _train_modules(a)
        runs.append(_run(name, _train_cmd(a, folder, extra, a.adapter_lr), folder))
    return _finish(a, f"adaptune sweep: {a.data} with {a.model}", runs, pareto_plots=True)
