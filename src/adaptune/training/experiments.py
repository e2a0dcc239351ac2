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

from ..core.contract import METHODS
from .config import RunConfig
from .options import method_argv, to_argv
from .tasks import task_named

__all__ = ["COMPARE_OPTIONS", "PRESETS", "run_compare", "run_sweep", "train_command"]

PRESETS = ("pfeiffer", "houlsby", "parallel")
# The RunConfig options compare / sweep take (declared on RunConfig), and the budget they default to.
COMPARE_OPTIONS = (
    "task",
    "model",
    "data",
    "out",
    "max_steps",
    "batch_size",
    "max_length",
    "limit",
    "seed",
    "precision",
    "train_modules",
    "text_column",
    "label_column",
    "target_column",
)
COMPARE_DEFAULTS = {"max_steps": 100}


def train_command(a: argparse.Namespace, out: Path, extra: list[str], lr: float) -> list[str]:
    """The ``adaptune train`` subprocess of one configuration: the shared options of ``a`` (RunConfig fields),
    this run's folder and learning rate, then ``extra`` (adapter options)."""
    values = {name: getattr(a, name) for name in COMPARE_OPTIONS if name != "train_modules"}
    values |= {"out": str(out), "lr": lr, "eval_limit": 200, "save_every": 10**9}
    values["log_every"] = max(1, a.max_steps // 5)
    cmd = [sys.executable, "-m", "adaptune.cli", "train", *to_argv(RunConfig, values)]
    return cmd + extra


def _train_modules(a: argparse.Namespace) -> list[str]:
    return to_argv(RunConfig, {"train_modules": a.train_modules})


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
    task = task_named(a.task)
    key, higher = task.main_metric_key, task.higher_is_better
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
                train_command(a, out / "full-finetune", ["--full-finetune"], a.full_lr),
                out / "full-finetune",
            )
        )
    for method in getattr(a, "methods", ["bottleneck"]):
        if method != "bottleneck":
            extra = ["--method", method, *method_argv(a, METHODS[method]), *_train_modules(a)]
            runs.append(_run(method, train_command(a, out / method, extra, a.adapter_lr), out / method))
            continue
        for preset in a.presets:
            extra = ["--preset", preset, "--reduction-factor", str(a.reduction_factor), *_train_modules(a)]
            runs.append(_run(preset, train_command(a, out / preset, extra, a.adapter_lr), out / preset))
    return _finish(a, f"adaptune compare: {a.data} with {a.model}", runs, pareto_plots=False)


def run_sweep(a: argparse.Namespace) -> int:
    """Short runs over placements x layer sets x reduction factors; table, plots, Pareto-best configs."""
    out = Path(a.out)
    runs = []
    method = getattr(a, "method", "bottleneck")
    if method != "bottleneck":  # the method's own options are fixed; the sweep runs over layer sets
        for layers in a.layer_sets:
            name, folder = f"{method}/{layers}", out / f"{method}_{layers.replace(':', '')}"
            extra = ["--method", method, *method_argv(a, METHODS[method]), "--layers", layers, *_train_modules(a)]
            runs.append(_run(name, train_command(a, folder, extra, a.adapter_lr), folder))
        return _finish(a, f"adaptune sweep ({method}): {a.data} with {a.model}", runs, pareto_plots=True)
    for placement, layers, rf in itertools.product(a.placements, a.layer_sets, a.reduction_factors):
        name = f"{placement}/{layers}/rf{rf:g}"
        folder = out / f"{placement}_{layers.replace(':', '')}_rf{rf:g}"
        preset = "houlsby" if placement == "both" else "parallel" if placement == "parallel" else "pfeiffer"
        extra = ["--preset", preset, "--placement", placement, "--layers", layers, "--reduction-factor", str(rf)]
        extra += _train_modules(a)
        runs.append(_run(name, train_command(a, folder, extra, a.adapter_lr), folder))
    return _finish(a, f"adaptune sweep: {a.data} with {a.model}", runs, pareto_plots=True)
