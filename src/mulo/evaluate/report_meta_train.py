"""The meta-training part of ``report``: a meta-train run directory's meta-loss over outer steps, per task, smoothed.

    python src/main.py report checkpoints/meta-train_<...> [meta-test run directories ...]

A meta-train run directory is recognised by its ``metrics.jsonl`` holding ``meta_loss`` records (mulo.meta.train
logs ``meta_loss`` = the mean over tasks and ``meta_loss/<task>`` per task). For each one the report draws
``meta_loss_<run>.png`` (each task's meta-loss smoothed by a running mean over ~5% of the steps, the raw values
faint behind it) and a table of the meta-loss at the start and the end of the run. A run that logs
``meta_loss_family/<family>`` (every run since multi-family meta-training; the mean over the family's tasks of each
task's meta-loss divided by its scale, see ``mulo.meta.train``) also gets ``meta_loss_families_<run>.png`` and a
table of those curves, one per family, when it mixes several families.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable

import numpy as np

METRICS = "metrics.jsonl"
PREFIX = "meta_loss/"
FAMILY_PREFIX = "meta_loss_family/"


def is_meta_train_dir(path: Path, read_metrics: Callable[[Path], list[dict]]) -> bool:
    return (path / METRICS).is_file() and any("meta_loss" in r for r in read_metrics(path / METRICS))


def meta_loss_curves(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{task: (steps, meta-losses)} from the records, plus ``mean`` (the logged mean over tasks) when there are
    several tasks; non-finite values are dropped."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for key, value in r.items():
            name = key[len(PREFIX):] if key.startswith(PREFIX) else ("mean" if key == "meta_loss" else None)
            value = _finite(value)
            if name is None or value is None:
                continue
            # a damaged key (a lone surrogate) is shown escaped: matplotlib cannot draw it
            name = name.encode("utf-8", "backslashreplace").decode("utf-8")
            series.setdefault(name, []).append((int(r["step"]), value))
    if len(series) == 2 and "mean" in series:  # one task: its curve is the mean
        del series["mean"]
    out = {}
    for name, pairs in series.items():
        pairs.sort()
        out[name] = (np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    return out


def _finite(value) -> float | None:
    """A logged number as a finite float, else None (a bool, a string, NaN, or an integer beyond the float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def family_curves(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{family: (steps, meta-losses)} from the ``meta_loss_family/<family>`` records; non-finite values dropped."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for key, value in r.items():
            if key.startswith(FAMILY_PREFIX) and _finite(value) is not None:
                series.setdefault(key[len(FAMILY_PREFIX):], []).append((int(r["step"]), _finite(value)))
    return {name: (np.array([p[0] for p in sorted(pairs)]), np.array([p[1] for p in sorted(pairs)]))
            for name, pairs in series.items()}


def smoothing_window(n: int) -> int:
    return max(1, round(n / 20))


def running_mean(y: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last ``k`` values at each point (fewer at the start)."""
    if k <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(np.asarray(y, dtype=np.float64), 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_meta_loss(name: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
                   ylabel: str = "meta-loss (smoothed)") -> dict:
    """One line per task (smoothed), raw values faint behind; the legend outside the axes. Returns what it drew."""
    from mulo.evaluate.figures import legend_clear_of_axes, legend_outside, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    labels = []
    for i, (task, (x, y)) in enumerate(sorted(curves.items(), key=lambda kv: (kv[0] == "mean", kv[0]))):
        color = "black" if task == "mean" else f"C{i % 10}"
        k = smoothing_window(len(y))
        ax.plot(x, y, color=color, alpha=0.2, lw=0.8)
        label = "mean over tasks" if task == "mean" else task
        ax.plot(x, running_mean(y, k), color=color, lw=2.0 if task == "mean" else 1.4, label=label)
        labels.append(label)
    ax.set_xlabel("outer step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"meta-training: {name}", fontsize=9)
    ax.grid(alpha=0.3)
    legend_outside(fig, *ax.get_legend_handles_labels())
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    clear = legend_clear_of_axes(fig)
    plt.close(fig)
    return {"title": f"meta-training: {name}", "labels": labels, "legend_clear": clear}


def markdown(name: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str | None = None,
             column: str = "task") -> str:
    """A table per meta-train run: mean meta-loss over the first and the last 10% of the logged steps."""
    lines = [title or f"## Meta-training: {name}", "",
             "Meta-loss: mean over the first and the last 10% of the logged outer steps.", "",
             f"| {column} | steps | first 10% | last 10% |", "|---|---|---|---|"]
    for task, (x, y) in sorted(curves.items(), key=lambda kv: (kv[0] == "mean", kv[0])):
        n = max(1, math.ceil(0.1 * len(y)))
        lines.append(f"| {'mean over tasks' if task == 'mean' else task} | {int(x[0])}–{int(x[-1])} | "
                     f"{float(np.mean(y[:n])):.4f} | {float(np.mean(y[-n:])):.4f} |")
    return "\n".join(lines) + "\n"


def figure_name(run_name: str) -> str:
    return "meta_loss_" + re.sub(r"[^A-Za-z0-9._+=-]", "_", run_name) + ".png"


def meta_train_section(run_dir: Path, out: Path, read_metrics: Callable[[Path], list[dict]]) -> tuple[str, str | None]:
    """(markdown, figure file name or None) for one meta-train run directory."""
    records = read_metrics(run_dir / METRICS)
    curves = meta_loss_curves(records)
    if not curves:
        return f"## Meta-training: {run_dir.name}\n\nNo finite meta-loss logged yet.\n", None
    fig = figure_name(run_dir.name)
    plot_meta_loss(run_dir.name, curves, out / fig)
    text = markdown(run_dir.name, curves)
    families = family_curves(records)
    if len(families) > 1:
        fam_fig = fig.replace("meta_loss_", "meta_loss_families_", 1)
        plot_meta_loss(f"{run_dir.name}, per family", families, out / fam_fig,
                       ylabel="meta-loss / task's scale, family mean (smoothed)")
        text += ("\n" + markdown(run_dir.name, families, f"### Per family: {run_dir.name}", "family")
                 + "\nEach task's meta-loss divided by its scale (loss_scale/<task>: its meta-loss at initialisation "
                 "with meta_loss_norm=init_loss, else 1), averaged over the family's tasks.\n"
                 f"\n![{fam_fig}]({fam_fig})\n")
    return text, fig
