"""The report's figures (``mulo.evaluate.report``): final train loss vs width, and train loss curves per width."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mulo.evaluate.figures import legend_clear_of_axes, legend_outside, pyplot
from mulo.evaluate.report_runs import Cell, Run, display_family

LOG_Y_SPAN = 20.0  # a y axis whose positive values span more than this factor is drawn in log scale


def y_scale(values) -> str:
    """"log" when the finite values are all positive and span more than LOG_Y_SPAN (e.g. a blown-up SP optimizer next
    to converged ones, which a linear axis would flatten into one line), else "linear"."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2 or np.any(v <= 0):
        return "linear"
    return "log" if v.max() / v.min() > LOG_Y_SPAN else "linear"


def plot_vs_width(fam: str, fcells: list[Cell], path: Path) -> dict:
    """Final train loss vs width, one line per optimizer (mean ± s.e.), diverged seeds as x. Returns what it drew
    (title, legend labels, y scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    finite = [c.mean for c in fcells if c.mean is not None]
    top = max(finite) * 1.05 if finite else 1.0
    for i, label in enumerate(sorted({c.label for c in fcells})):
        color = f"C{i % 10}"
        cs = sorted((c for c in fcells if c.label == label and c.width is not None), key=lambda c: c.width)
        ok = [c for c in cs if c.mean is not None]
        if ok:
            ax.errorbar([c.width for c in ok], [c.mean for c in ok], yerr=[c.se for c in ok], marker="o",
                        capsize=3, label=label, color=color)
        div = [c for c in cs if c.n_diverged]
        if div:  # x at the mean of the other seeds, or at the top when every seed diverged
            ax.scatter([c.width for c in div], [c.mean if c.mean is not None else top for c in div], marker="x",
                       s=80, color=color, zorder=5, label=f"{label}: diverged seeds")
    scale = y_scale(finite)
    ax.set_xscale("log", base=2)
    ax.set_yscale(scale)
    ax.set_xlabel("width")
    ax.set_ylabel("final train loss")
    title = display_family(fcells)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    legend_outside(fig, handles, labels)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    clear = legend_clear_of_axes(fig)
    plt.close(fig)
    return {"title": title, "labels": labels, "yscale": scale, "legend_clear": clear}


def _mean_curve(runs: list[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    ok = [r for r in runs if not r.diverged and len(r.steps)]
    if not ok:
        return None
    n = min(len(r.steps) for r in ok)
    stack = np.stack([r.train_loss[:n] for r in ok])
    se = stack.std(axis=0, ddof=1) / math.sqrt(len(ok)) if len(ok) > 1 else np.zeros(n)
    return ok[0].steps[:n], stack.mean(axis=0), se


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(y) < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = (c[k:] - c[:-k]) / k
    return np.concatenate([y[:k - 1], out])


def plot_curves(fam: str, fcells: list[Cell], path: Path) -> dict:
    """Train loss curves, one panel per width, one line per optimizer (mean over seeds, band ± s.e.; diverged seeds
    dashed). Every panel has the same y scale and limits, so panels compare at a glance. Returns what it drew."""
    plt = pyplot()
    widths = sorted({c.width for c in fcells}, key=lambda w: w or 0)
    labels = sorted({c.label for c in fcells})
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    ncol = min(4, len(widths))
    nrow = math.ceil(len(widths) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), squeeze=False, sharey=True)
    curves = {}
    for c in fcells:
        curve = _mean_curve(c.runs)
        if curve is not None:
            x, y, se = curve
            k = max(1, len(y) // 50)
            curves[(c.label, c.task)] = (x, _smooth(y, k), _smooth(se, k))
    finished = [v for x, ys, ses in curves.values() for v in (float(np.nanmin(ys)), float(np.nanmax(ys)))]
    ymax = max((float(np.nanmax(ys + ses)) for _, ys, ses in curves.values()), default=None)
    scale = y_scale(finished)
    any_diverged = any(r.diverged and len(r.steps) for c in fcells for r in c.runs)
    for ax, w in zip(axes.flat, widths):
        for c in (c for c in fcells if c.width == w):
            if (c.label, c.task) in curves:
                x, ys, ses = curves[(c.label, c.task)]
                ax.plot(x, ys, color=colors[c.label], label=c.label)
                ax.fill_between(x, ys - ses, ys + ses, color=colors[c.label], alpha=0.2)
            for j, r in enumerate(r for r in c.runs if r.diverged and len(r.steps)):
                finite = np.isfinite(r.train_loss)
                y = r.train_loss[finite]
                if ymax is not None:  # keep the finished runs readable: clip the blow-up to the frame
                    y = np.minimum(y, ymax * 1.1)
                ax.plot(r.steps[finite], y, color=colors[c.label], lw=0.8, ls="--", alpha=0.8,
                        label=f"{c.label} (diverged)" if j == 0 else None)
        ax.set_yscale(scale)
        ax.set_title(f"width {w}" if w is not None else fcells[0].task, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.grid(alpha=0.3)
    if ymax is not None:
        axes.flat[0].set_ylim(top=ymax * (2.0 if scale == "log" else 1.1))  # shared by every panel
    for ax in list(axes.flat)[len(widths):]:
        ax.axis("off")
    seen = {}
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(n, h)
    legend_outside(fig, list(seen.values()), list(seen.keys()))
    title = display_family(fcells) + (" (dashed: diverged seeds)" if any_diverged else "")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    ylims = [tuple(ax.get_ylim()) for ax in list(axes.flat)[:len(widths)]]
    yscales = [ax.get_yscale() for ax in list(axes.flat)[:len(widths)]]
    clear = legend_clear_of_axes(fig)
    plt.close(fig)
    return {"title": title, "labels": list(seen.keys()), "yscales": yscales, "ylims": ylims, "legend_clear": clear}

