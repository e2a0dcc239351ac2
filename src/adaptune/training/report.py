"""The report folder written after a train/eval/compare/sweep run (``report.md``, JSON, PNG plots), and the plots.

Every file is written atomically (a temporary sibling, then ``os.replace``), so an interrupted run never leaves a
half-written report. Plots are drawn on a bare ``matplotlib.figure.Figure``, which renders with Agg: no pyplot, so
no global backend switch, no figure registry to leak into, no display needed. matplotlib is imported lazily so the
JSON and markdown helpers work without it.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..util import atomic_write, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "markdown_table",
    "pareto_front",
    "plot_curves",
    "plot_heatmap",
    "plot_tradeoff",
    "write_json_atomic",
    "write_report",
]

_LOSS_KEYS = ("train_loss", "eval_loss")
# Throughput/timing entries share the eval_ prefix but are not quality metrics; plotting them beside accuracy
# would squash its axis.
_NOT_METRICS = ("_runtime", "_per_second")


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):  # bool is an int subclass; "True" reads better than "1"
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        return format(float(value), floatfmt)
    # A "|" or newline inside a cell would break the table row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, floatfmt: str = ".4g") -> str:
    """Render ``rows`` as a GitHub markdown table, without a trailing newline (``""`` if there are no columns).

    ``columns`` defaults to the keys of the first row. Ints get thousands separators, floats use ``floatfmt``,
    ``None`` and missing keys show as "—".
    """
    if columns is None:
        columns = list(rows[0]) if rows else []
    if not columns:
        return ""
    lines = ["| " + " | ".join(_cell(c, floatfmt) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c), floatfmt) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or None for missing/non-numeric/NaN/inf (points to skip)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _new_figure(figsize: tuple[float, float] = (6, 4)) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=120)


def _save_figure(fig: Figure, out_png: Path) -> Path:
    out_png = Path(out_png)
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    fig.clear()  # drop artists now; no pyplot registry holds the figure, so it is freed with its last reference
    return out_png


def plot_curves(
    history: list[dict[str, float]],
    out_png: Path,
    *,
    x: str = "step",
    keys: Sequence[str] = _LOSS_KEYS,
    title: str = "",
) -> Path | None:
    """Line plot of each of ``keys`` against ``x`` over a training history; returns ``out_png``.

    Args:
        history: Logged records, e.g. ``[{"step": 10, "train_loss": 0.7}, {"step": 20, "eval_loss": 0.6}]``.
        out_png: Destination PNG; not written (and None returned) when no key has any data.
        x: Key for the horizontal axis; if no record has it, the record index is used.
        keys: Series to draw; records lacking a key (or holding None/NaN) are skipped for that series only.
        title: Figure title.
    """
    use_index = not any(x in rec for rec in history)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for key in keys:
        xs, ys = [], []
        for i, rec in enumerate(history):
            xv, yv = (float(i) if use_index else _num(rec.get(x))), _num(rec.get(key))
            if xv is not None and yv is not None:
                xs.append(xv)
                ys.append(yv)
        if xs:
            series[key] = (xs, ys)
    if not series:
        return None
    fig = _new_figure()
    ax = fig.subplots()
    for key, (xs, ys) in series.items():
        # Markers keep sparse series (eval every N steps, or a single point) visible.
        ax.plot(xs, ys, label=key, marker="o" if len(xs) <= 50 else None, markersize=3)
    ax.set_xlabel("record" if use_index else x)
    ax.set_ylabel(next(iter(series)) if len(series) == 1 else "loss" if all("loss" in k for k in series) else "value")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save_figure(fig, out_png)


def _xy_points(rows: list[dict[str, Any]], x: str, y: str, label: str) -> list[tuple[float, float, str]]:
    """``(x, y, label)`` of each row holding numbers for both ``x`` and ``y``."""
    points = []
    for row in rows:
        xv, yv = _num(row.get(x)), _num(row.get(y))
        if xv is not None and yv is not None:
            points.append((xv, yv, str(row.get(label, ""))))
    return points


def pareto_front(rows: list[dict[str, Any]], *, minimize: str, maximize: str, label: str = "name") -> list[str]:
    """``str(row[label])`` of the rows no other row dominates (e.g. fewest parameters for the best accuracy).

    Row ``a`` dominates ``b`` when ``a[minimize] <= b[minimize]`` and ``a[maximize] >= b[maximize]`` with at least
    one strict; rows tied on both values therefore both stay. Rows missing either value are ignored. The result is
    sorted by ``minimize`` (ties: higher ``maximize`` first, then name).
    """
    points = _xy_points(rows, minimize, maximize, label)
    front = [
        (c, v, name)
        for c, v, name in points
        if not any(c2 <= c and v2 >= v and (c2 < c or v2 > v) for c2, v2, _ in points)
    ]
    return [name for _, _, name in sorted(front, key=lambda p: (p[0], -p[1], p[2]))]


def plot_tradeoff(
    rows: list[dict[str, Any]],
    out_png: Path,
    *,
    x: str,
    y: str,
    label: str = "name",
    pareto: list[str] | None = None,
    logx: bool = True,
    title: str = "",
) -> Path:
    """Scatter of ``y`` against ``x``, one point per row annotated with ``row[label]``; returns ``out_png``.

    Args:
        rows: One dict per run; rows missing ``x`` or ``y`` are left out.
        out_png: Destination PNG.
        x: Key for the horizontal axis (e.g. trainable parameters); log scale if ``logx`` and every x > 0.
        y: Key for the vertical axis (e.g. accuracy).
        label: Key naming each point.
        pareto: Labels on the front (see ``pareto_front``): drawn in red and joined by a step line in ``x`` order.
        logx: Log-scale the x axis.
        title: Figure title; defaults to "y vs x".
    """
    pts = _xy_points(rows, x, y, label)
    on_front = set(pareto or [])
    fig = _new_figure()
    ax = fig.subplots()
    rest = [p for p in pts if p[2] not in on_front]
    best = sorted((p for p in pts if p[2] in on_front), key=lambda p: (p[0], p[1]))
    if rest:
        ax.scatter([p[0] for p in rest], [p[1] for p in rest], s=25, color="tab:gray", label="runs", zorder=2)
    if best:
        bx, by = [p[0] for p in best], [p[1] for p in best]
        # "post": from each front point the best reachable y holds until a costlier point improves on it.
        ax.step(bx, by, where="post", color="tab:red", alpha=0.6, zorder=1)
        ax.scatter(bx, by, s=50, color="tab:red", edgecolors="black", label="Pareto front", zorder=3)
    for xv, yv, name in pts:
        ax.annotate(name, (xv, yv), xytext=(4, 4), textcoords="offset points", fontsize=8)
    if logx and pts and all(p[0] > 0 for p in pts):
        ax.set_xscale("log")
    ax.margins(0.1)  # room for the labels of the outermost points
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} vs {x}")
    if pts:
        ax.legend()
    ax.grid(alpha=0.3)
    return _save_figure(fig, out_png)


def plot_heatmap(
    matrix: Sequence[Sequence[float]],
    out_png: Path,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    fmt: str = ".2f",
) -> Path:
    """Annotated heatmap, e.g. fusion attention with one row per layer and one column per adapter.

    ``matrix`` may be nested lists, a NumPy array or a CPU tensor; NaN cells stay blank and each other cell shows
    its value formatted with ``fmt``. Returns ``out_png``.

    Raises:
        ValueError: If the matrix is not 2-D or does not match the number of row and column labels.
    """
    import numpy as np

    data = np.asarray(matrix, dtype=float)
    if data.ndim != 2 or data.shape != (len(row_labels), len(col_labels)):
        raise ValueError(
            f"matrix shape {data.shape} does not match {len(row_labels)} row and {len(col_labels)} column labels"
        )
    n_rows, n_cols = data.shape
    # Grow past (6, 4) only when cells would otherwise be too small for their numbers.
    fig = _new_figure((max(6.0, 0.7 * n_cols + 2.5), max(4.0, 0.35 * n_rows + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(data, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(n_cols), labels=list(col_labels), rotation=30, ha="right")
    ax.set_yticks(range(n_rows), labels=list(row_labels))
    for i in range(n_rows):
        for j in range(n_cols):
            if math.isfinite(data[i, j]):
                # Dark text on the bright (high) end of viridis, light text on the dark end.
                color = "black" if im.norm(data[i, j]) > 0.5 else "white"
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", color=color, fontsize=8)
    ax.set_title(title)
    return _save_figure(fig, out_png)


def _metric_keys(history: list[dict[str, float]]) -> list[str]:
    keys: dict[str, None] = {}  # ordered set, first-seen order
    for rec in history:
        for k, v in rec.items():
            if k.startswith("eval_") and k != "eval_loss" and not k.endswith(_NOT_METRICS) and _num(v) is not None:
                keys[k] = None
    return list(keys)


def write_report(
    out_dir: Path,
    *,
    title: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    history: list[dict[str, float]] | None = None,
    tables: dict[str, list[dict[str, Any]]] | None = None,
    images: dict[str, Path] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write a run's report folder and return the path of its ``report.md``.

    Writes ``metrics.json``, ``config.json``, ``loss.png`` (train/eval loss from ``history``), ``metric.png``
    (every other ``eval_*`` metric in ``history``) and ``report.md``. A plot with no data is not written, and a stale
    one from an earlier report in the same folder is removed so the folder matches ``report.md``.

    Args:
        out_dir: Report folder; created if missing.
        title: Heading of ``report.md``.
        config: Run configuration, stored as JSON and shown in a fenced block.
        metrics: Final metrics, stored as JSON and shown as a table.
        history: Logged records with a ``step`` key, for the curves.
        tables: Extra named tables (e.g. a comparison), rendered with ``markdown_table``.
        images: Extra named images, linked relative to ``out_dir``.
        notes: Free-text remarks, shown as bullets.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_json_atomic(out_dir / "config.json", config)

    history = history or []
    curves: dict[str, Path | None] = {}
    for heading, name, keys in (
        ("Loss", "loss.png", _LOSS_KEYS),
        ("Eval metrics", "metric.png", _metric_keys(history)),
    ):
        curves[heading] = plot_curves(history, out_dir / name, keys=keys, title=heading)
        if curves[heading] is None:
            (out_dir / name).unlink(missing_ok=True)

    written = datetime.now(timezone.utc).isoformat(timespec="seconds")
    parts = [f"# {title}", f"Written {written} (UTC).", "## Metrics"]
    parts.append(markdown_table([{"metric": k, "value": v} for k, v in metrics.items()]) or "_none_")
    figures = {name: png for name, png in curves.items() if png is not None} | dict(images or {})
    for name, rows in (tables or {}).items():
        parts += [f"## {name}", markdown_table(rows) or "_empty_"]
    for name, png in figures.items():
        # Relative links keep the folder viewable after it is moved or copied elsewhere.
        rel = Path(os.path.relpath(Path(png).resolve(), out_dir.resolve())).as_posix()
        parts += [f"## {name}", f"![{name}]({rel})"]
    if notes:
        parts += ["## Notes", "\n".join(f"- {note}" for note in notes)]
    # Config last: it is long, and the results are what a reader opens the report for.
    config_json = json.dumps(config, indent=2, ensure_ascii=False, default=str)
    parts += ["## Config", f"```json\n{config_json}\n```"]
    report = out_dir / "report.md"
    write_text_atomic(report, "\n\n".join(parts) + "\n")
    return report
