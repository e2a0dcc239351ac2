"""Report folder and plots: exact markdown, Pareto front, atomic writes, valid PNGs, the files a report holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from adaptune.training import report
from adaptune.training.report import (
    markdown_table,
    pareto_front,
    plot_curves,
    plot_heatmap,
    plot_tradeoff,
    write_json_atomic,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

HISTORY = [
    {"step": 10, "train_loss": 0.9},
    {"step": 20, "train_loss": 0.7, "eval_loss": 0.8, "eval_accuracy": 0.6, "eval_runtime": 1.5},
    {"step": 30, "train_loss": 0.5},
    {"step": 40, "train_loss": 0.4, "eval_loss": 0.6, "eval_accuracy": 0.75, "eval_macro_f1": 0.7},
]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000  # a real rendered figure, not an empty canvas


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- markdown_table ---------------------------------------------------------------------------------------------


def test_markdown_table_formats_ints_floats_none_and_missing() -> None:
    rows = [
        {"name": "bottleneck", "params": 1234567, "acc": 0.912345, "f1": None},
        {"name": "a|b", "params": 12, "acc": 1e-5},  # "f1" missing; "|" must not split the cell
    ]
    assert markdown_table(rows) == (
        "| name | params | acc | f1 |\n"
        "|---|---|---|---|\n"
        "| bottleneck | 1,234,567 | 0.9123 | — |\n"
        "| a\\|b | 12 | 1e-05 | — |"
    )


def test_markdown_table_columns_and_floatfmt() -> None:
    rows = [{"a": 1.0, "b": 2.5, "c": True}]
    assert markdown_table(rows, columns=["c", "b"], floatfmt=".2f") == "| c | b |\n|---|---|\n| True | 2.50 |"
    assert markdown_table([]) == ""
    assert markdown_table([], columns=["x"]) == "| x |\n|---|"


# --- pareto_front -----------------------------------------------------------------------------------------------


def test_pareto_front_exact_names_with_ties_and_dominated_points() -> None:
    rows = [
        {"name": "big", "params": 1000, "acc": 0.90},
        {"name": "small", "params": 10, "acc": 0.70},
        {"name": "small_twin", "params": 10, "acc": 0.70},  # identical to "small": neither dominates, both stay
        {"name": "mid", "params": 100, "acc": 0.85},
        {"name": "mid_worse", "params": 100, "acc": 0.80},  # same cost as "mid", lower accuracy: dominated
        {"name": "bloated", "params": 5000, "acc": 0.90},  # same accuracy as "big" at higher cost: dominated
        {"name": "bad", "params": 500, "acc": 0.60},  # dominated by "small" and "mid"
        {"name": "no_acc", "params": 1},  # missing value: ignored, not on the front
    ]
    assert pareto_front(rows, minimize="params", maximize="acc") == ["small", "small_twin", "mid", "big"]


def test_pareto_front_custom_label() -> None:
    rows = [{"id": 1, "cost": 2.0, "score": 1.0}, {"id": 2, "cost": 1.0, "score": 1.0}]
    assert pareto_front(rows, minimize="cost", maximize="score", label="id") == ["2"]


# --- write_json_atomic ------------------------------------------------------------------------------------------


def test_write_json_atomic_round_trips_unicode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    data = {"zeta": "größe ✓ 日本語", "alpha": [1, 2.5, None], "path": Path("a/b")}
    out = tmp_path / "sub" / "data.json"
    write_json_atomic(out, data)
    text = out.read_text(encoding="utf-8")
    assert "größe ✓ 日本語" in text  # ensure_ascii=False: readable, not \u escapes
    assert text.index("zeta") < text.index("alpha")  # keys keep insertion order
    assert json.loads(text) == {"zeta": "größe ✓ 日本語", "alpha": [1, 2.5, None], "path": "a/b"}
    assert os.listdir(out.parent) == ["data.json"]


def test_interrupted_write_leaves_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "metrics.json"
    write_json_atomic(out, {"acc": 0.5})

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(out, {"acc": 0.9})
    assert json.loads(out.read_text()) == {"acc": 0.5}
    png = tmp_path / "loss.png"
    monkeypatch.undo()
    plot_curves(HISTORY, png)
    before = png.read_bytes()
    monkeypatch.setattr(report.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        plot_curves(HISTORY, png, keys=("eval_accuracy",))
    assert png.read_bytes() == before
    assert leftovers(tmp_path) == []


# --- plots ------------------------------------------------------------------------------------------------------


def test_plot_curves_writes_png_and_skips_missing_points(tmp_path: Path) -> None:
    out = plot_curves(HISTORY, tmp_path / "loss.png", title="Loss")
    assert out == tmp_path / "loss.png"
    assert_png(out)
    assert leftovers(tmp_path) == []


def test_plot_curves_returns_none_without_data(tmp_path: Path) -> None:
    assert plot_curves([], tmp_path / "a.png") is None
    assert plot_curves([{"step": 1, "train_loss": None}], tmp_path / "b.png") is None
    assert plot_curves(HISTORY, tmp_path / "c.png", keys=("eval_bleu",)) is None
    assert list(tmp_path.iterdir()) == []


def test_plot_tradeoff_and_heatmap_write_pngs(tmp_path: Path) -> None:
    rows = [
        {"name": "lora", "params": 300, "acc": 0.82},
        {"name": "bottleneck", "params": 900, "acc": 0.86},
        {"name": "full", "params": 100_000, "acc": 0.87},
        {"name": "prefix", "params": 2_000, "acc": 0.80},
    ]
    front = pareto_front(rows, minimize="params", maximize="acc")
    assert_png(plot_tradeoff(rows, tmp_path / "tradeoff.png", x="params", y="acc", pareto=front))
    matrix = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, float("nan")]]
    out = plot_heatmap(matrix, tmp_path / "heat.png", row_labels=["L0", "L1", "L2"], col_labels=["a", "b", "c"])
    assert_png(out)
    with pytest.raises(ValueError, match="does not match"):
        plot_heatmap(matrix, tmp_path / "bad.png", row_labels=["L0"], col_labels=["a", "b", "c"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.png", "tradeoff.png"]


# --- write_report -----------------------------------------------------------------------------------------------


def test_write_report_writes_exactly_the_expected_files(tmp_path: Path) -> None:
    extra = tmp_path / "shared" / "tradeoff.png"
    plot_tradeoff([{"name": "a", "params": 1, "acc": 0.5}], extra, x="params", y="acc")
    out_dir = tmp_path / "run"
    path = write_report(
        out_dir,
        title="SST-2 bottleneck",
        config={"task": "sst2", "lr": 1e-3, "note": "ünïcode"},
        metrics={"eval_accuracy": 0.912345, "trainable_params": 1234567},
        history=HISTORY,
        tables={"Comparison": [{"name": "a", "acc": 0.5}]},
        images={"Trade-off": extra},
        notes=["seed 0", "base frozen"],
    )
    assert path == out_dir / "report.md"
    assert sorted(os.listdir(out_dir)) == ["config.json", "loss.png", "metric.png", "metrics.json", "report.md"]
    assert_png(out_dir / "loss.png")
    assert_png(out_dir / "metric.png")
    assert json.loads((out_dir / "metrics.json").read_text())["trainable_params"] == 1234567
    assert json.loads((out_dir / "config.json").read_text(encoding="utf-8"))["note"] == "ünïcode"

    md = path.read_text(encoding="utf-8")
    assert md.startswith("# SST-2 bottleneck\n")
    assert "| eval_accuracy | 0.9123 |" in md
    assert "| trainable_params | 1,234,567 |" in md
    assert "![Loss](loss.png)" in md
    assert "![Eval metrics](metric.png)" in md
    assert "![Trade-off](../shared/tradeoff.png)" in md  # relative, not absolute
    assert str(tmp_path) not in md
    assert "## Comparison\n\n| name | acc |" in md
    assert "- seed 0\n- base frozen" in md
    assert '```json\n{\n  "task": "sst2",' in md
    assert "(UTC)" in md


def test_write_report_without_history_writes_no_plots_and_drops_stale_ones(tmp_path: Path) -> None:
    write_report(tmp_path, title="first", config={}, metrics={"acc": 1.0}, history=HISTORY)
    assert (tmp_path / "loss.png").exists()
    path = write_report(tmp_path, title="eval only", config={"a": 1}, metrics={"acc": 0.5})
    assert sorted(os.listdir(tmp_path)) == ["config.json", "metrics.json", "report.md"]
    assert ".png" not in path.read_text()


def test_metric_plot_keys_exclude_loss_and_timing() -> None:
    assert report._metric_keys(HISTORY) == ["eval_accuracy", "eval_macro_f1"]
