"""Figures and tables from meta-test run directories (the paper's "final loss vs width" and loss curves), and the
meta-loss of meta-train run directories (``mulo.evaluate.report_meta_train``).

    python src/main.py report RUN_DIR [RUN_DIR ...] [--output_dir DIR] [--sweep_objective_frac 0.05]

Each RUN_DIR is a meta-test run directory (``<task>/seed<k>/{summary.json,metrics.jsonl}``, see meta_test.py); one
run directory is one optimizer, labelled by what tells it apart (``run_label``: ``muadam lr=0.03``,
``mup_small_fc_mlp (θ <meta-train run>)``; the directory's name when two directories would share a label). Tasks
that differ only in width (``-w<W>-``) form a family; figures are titled by the tasks' own names (``mumlp-w*-d3_X``).

Per run, the final train loss is the mean train loss over the last ``sweep_objective_frac`` of the steps (the
definition of meta-test's summaries and of the sweep's objective; 5% by default), so one noisy minibatch does not
decide it. Per (optimizer, task) the report gives
the mean and standard error (std with ddof=1 / sqrt(n)) over the seeds that did not diverge, and the number of
diverged seeds.

Written to its own directory, ``report_<first RUN_DIR's name>[+<n>more]`` next to the first RUN_DIR (or to
``--output_dir`` when given on the command line):

* ``loss_vs_width_<family>.png``: final train loss vs width (log2 x axis; log y axis when the losses span more than
  20x), mean ± s.e., diverged runs as x;
* ``curves_<family>.png``: train loss curves per width, one line per optimizer (mean over seeds, band ± s.e.), the
  same y axis on every panel, legends outside the axes;
* ``meta_loss_<run>.png`` for each meta-train RUN_DIR: its meta-loss per task, smoothed;
* ``report.md``: a table per family (rows: optimizer, columns: width) of the same numbers, plus test loss;
* ``results.json``: the same numbers at full precision.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mulo.errors import MuloError
from mulo.evaluate.figures import legend_clear_of_axes, legend_outside, pyplot
from mulo.evaluate.meta_test import MANIFEST, METRICS, SUMMARY, final_loss_text, tail_mean
from mulo.io import atomic_write_json, atomic_write_text, read_jsonl

_WIDTH = re.compile(r"-w(\d+)-")


class ReportError(MuloError):
    """No meta-test results where the report looked."""


@dataclass
class Run:
    label: str
    task: str
    seed: int
    diverged: bool
    diverged_step: int | None
    steps: np.ndarray  # steps with a train loss
    train_loss: np.ndarray
    test_loss: float | None
    final: float | None  # tail-mean train loss (None if diverged)


@dataclass
class Cell:
    """One (optimizer, task): the aggregate over its seeds."""

    label: str
    task: str
    family: str
    width: int | None
    n: int = 0
    n_diverged: int = 0
    n_ok: int = 0  # seeds in the mean: finished with a finite final loss
    mean: float | None = None
    se: float | None = None
    test_mean: float | None = None
    runs: list = field(default_factory=list)


def family_and_width(task: str) -> tuple[str, int | None]:
    """(family, width): the muP and SP versions of a model share a family (``mumlp-w128-d3_X`` and ``mlp-w256-d3_X``
    -> ``mlp-w*-d3_X``), as in the paper's figures where muLOs run on muP tasks and SP LOs on SP tasks."""
    m = _WIDTH.search(task)
    if not m:
        return task, None
    return re.sub(r"^mu", "", _WIDTH.sub("-w*-", task, count=1)), int(m.group(1))


def _final(summary: dict, losses: np.ndarray, frac: float) -> float:
    """The run's final train loss, as meta-test defined it in its summary (``run_summary``) when it used this
    ``frac``; else the same definition (``tail_mean``) computed from the logged losses."""
    value = summary.get("final_train_loss")
    if summary.get("final_train_loss_def") == final_loss_text(frac) and isinstance(value, (int, float)):
        return float(value)
    return tail_mean(list(losses), frac)


def run_label(manifest: dict) -> str | None:
    """A legend / table label that tells runs apart: ``muadam lr=0.03``; ``mup_small_fc_mlp (θ <meta-train run>)``
    for a learned optimizer (its θ's run directory, step when not the final θ, its wandb run, or its named source
    such as ``hf:btherien/mulo``)."""
    name = manifest.get("optimizer")
    if not isinstance(name, str):
        return None
    info = manifest.get("optimizer_info") if isinstance(manifest.get("optimizer_info"), dict) else {}
    hparams = info.get("hparams") if isinstance(info.get("hparams"), dict) else {}
    extra = info.get("checkpoint_extra") if isinstance(info.get("checkpoint_extra"), dict) else {}
    if info.get("wandb_checkpoint_id"):
        return f"{name} (θ {info['wandb_checkpoint_id']})"
    if isinstance(extra.get("source"), str):  # a named source: hf:OWNER/NAME, pretrained:NAME
        return f"{name} (θ {extra['source']})"
    if isinstance(info.get("checkpoint"), str):
        path = Path(info["checkpoint"])
        run = path.parent.parent if path.parent.name == "theta" else path.parent
        prefix = f"meta-train_{name}{hparams.get('hidden_size', '')}_"
        where = run.name[len(prefix):] if run.name.startswith(prefix) else run.name
        step = "" if path.stem == "theta_final" else f" {path.stem.replace('theta_', '')}"
        return f"{name} (θ {where}{step})"
    lr = hparams.get("learning_rate")
    return f"{name} lr={lr:g}" if isinstance(lr, (int, float)) else name


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond the float range
        return math.nan


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _read_summary(path: Path) -> dict | None:
    """A run's summary.json, or None (with a warning naming the file) when it is damaged."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _warn(f"skipping the run in {path.parent}: {path.name} is damaged ({type(exc).__name__})")
        return None
    if not isinstance(summary, dict):
        _warn(f"skipping the run in {path.parent}: {path.name} is not a JSON object")
        return None
    return summary


def _read_metrics(path: Path) -> list[dict]:
    """A run's metrics records; damaged lines are skipped with one warning naming the file."""
    if not path.is_file():
        return []
    bad: list[int] = []
    try:
        records = read_jsonl(path, bad)
    except OSError as exc:
        _warn(f"cannot read {path}: {exc.strerror or exc}; its run has no curve")
        return []
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        _warn(f"{path}: skipped {len(bad)} damaged line(s) (line {shown})")
    return [r for r in records if _is_step(r.get("step"))]


def _is_step(step: Any) -> bool:
    """A step counter: an int (not a bool) that fits int64 (a 400-digit number does not)."""
    return isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 2**63


def load_runs(run_dirs: Sequence[str | os.PathLike], frac: float) -> list[Run]:
    """Every finished (task, seed) run of the given meta-test run directories."""
    dirs = [Path(d) for d in run_dirs]
    labels = {}
    for d in dirs:
        if not d.is_dir():
            raise ReportError(f"not a directory: {d}")
        manifest = d / MANIFEST
        name = None
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
                name = run_label(data) if isinstance(data, dict) else None
            except (OSError, ValueError):
                name = None
        labels[d] = name or d.name
    counts = defaultdict(int)
    for v in labels.values():
        counts[v] += 1
    labels = {d: (v if counts[v] == 1 else d.name) for d, v in labels.items()}
    runs = []
    for d in dirs:
        for summary_path in sorted(d.glob(f"*/seed*/{SUMMARY}")):
            seed_dir = summary_path.parent
            if not re.fullmatch(r"seed\d+", seed_dir.name):
                continue  # runs moved aside (seed3.old-...)
            summary = _read_summary(summary_path)
            if summary is None:
                continue
            records = _read_metrics(seed_dir / METRICS)
            pairs = [(r["step"], _as_float(r["train_loss"])) for r in records if "train_loss" in r]
            steps = np.array([p[0] for p in pairs], dtype=np.int64)
            losses = np.array([p[1] for p in pairs], dtype=np.float64)
            diverged = bool(summary.get("diverged"))
            final = None if diverged or not len(losses) else _final(summary, losses, frac)
            tests = [_as_float(r["test_loss"]) for r in records if "test_loss" in r]
            try:
                seed = int(summary.get("seed", seed_dir.name[4:]))
            except (TypeError, ValueError):
                seed = int(seed_dir.name[4:])
            task = summary.get("task")
            runs.append(Run(label=labels[d], task=task if isinstance(task, str) else seed_dir.parent.name,
                            seed=seed, diverged=diverged,
                            diverged_step=summary.get("diverged_step"), steps=steps, train_loss=losses,
                            test_loss=tests[-1] if tests and not diverged else None, final=final))
    if not runs:
        raise ReportError("no meta-test results (<task>/seed<k>/summary.json) in " + ", ".join(map(str, dirs)))
    return runs


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    a = np.asarray(values, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0
    return float(a.mean()), se


def aggregate(runs: list[Run]) -> list[Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    # one optimizer run on both the muP and the SP version of a family: tell the two apart
    kinds = defaultdict(set)
    for r in runs:
        kinds[(r.label, family_and_width(r.task)[0])].add(r.task.startswith("mu"))
    for r in runs:
        fam, width = family_and_width(r.task)
        if len(kinds[(r.label, fam)]) > 1:
            r.label = f"{r.label} ({'muP' if r.task.startswith('mu') else 'SP'} task)"
        cell = cells.setdefault((r.label, r.task), Cell(label=r.label, task=r.task, family=fam, width=width))
        cell.runs.append(r)
    for cell in cells.values():
        ok = [r for r in cell.runs if not r.diverged and r.final is not None and math.isfinite(r.final)]
        cell.n = len(cell.runs)
        cell.n_diverged = sum(r.diverged for r in cell.runs)
        cell.n_ok = len(ok)
        cell.mean, cell.se = _mean_se([r.final for r in ok])
        tests = [r.test_loss for r in ok if r.test_loss is not None and math.isfinite(r.test_loss)]
        cell.test_mean = float(np.mean(tests)) if tests else None
    return sorted(cells.values(), key=lambda c: (c.family, c.label, c.width or 0))


# ---------------------------------------------------------------------------------------------------------------------
# table


def fmt_cell(cell: Cell | None, what: str = "train") -> str:
    if cell is None:
        return ""
    if what == "test":
        return "-" if cell.test_mean is None else f"{cell.test_mean:.4f}"
    div = f"{cell.n_diverged}/{cell.n} diverged" if cell.n_diverged else ""
    if cell.mean is None:
        return f"diverged ({cell.n_diverged}/{cell.n})" if cell.n_diverged else "n/a"
    if cell.n_ok == 1:  # no standard error from one seed: say so instead of "± 0.0000"
        return f"{cell.mean:.4f} (1 seed{'; ' + div if div else ''})"
    return f"{cell.mean:.4f} ± {cell.se:.4f}" + (f" ({div})" if div else "")


def markdown(cells: list[Cell], frac: float) -> str:
    lines = ["# Meta-test report", "",
             f"Final train loss = {final_loss_text(frac)} of a run (as in the meta-test summaries and sweeps); "
             "cells give the mean ± standard error over the seeds that did not diverge (diverged seeds counted "
             "apart; one seed: no error).", ""]
    by_family: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        by_family[c.family].append(c)
    for fam, fcells in by_family.items():
        widths = sorted({c.width for c in fcells}, key=lambda w: (w is None, w or 0))
        labels = sorted({c.label for c in fcells})
        index = {(c.label, c.width): c for c in fcells}
        for what, title in (("train", "final train loss"), ("test", "last test loss (mean over finished seeds)")):
            if what == "test" and all(c.test_mean is None for c in fcells):
                continue
            lines += [f"## {display_family(fcells)}: {title}", "",
                      "| optimizer | " + " | ".join(f"w={w}" if w is not None else "-" for w in widths) + " |",
                      "|---|" + "---|" * len(widths)]
            for label in labels:
                lines.append(f"| {label} | " + " | ".join(fmt_cell(index.get((label, w)), what) for w in widths)
                             + " |")
            lines.append("")
        seeds = sorted({r.seed for c in fcells for r in c.runs})
        lines += [f"Seeds: {', '.join(map(str, seeds))}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# figures


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", name.replace("*", "W"))


LOG_Y_SPAN = 20.0  # a y axis whose positive values span more than this factor is drawn in log scale


def y_scale(values) -> str:
    """"log" when the finite values are all positive and span more than LOG_Y_SPAN (e.g. a blown-up SP optimizer next
    to converged ones, which a linear axis would flatten into one line), else "linear"."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2 or np.any(v <= 0):
        return "linear"
    return "log" if v.max() / v.min() > LOG_Y_SPAN else "linear"


def display_family(fcells: list[Cell]) -> str:
    """The family as its tasks spell it (``mumlp-w*-d3_X``; ``mumlp / mlp-w*-d3_X`` when both parametrisations ran),
    not the shared key ``family_and_width`` groups them by."""
    names = sorted({_WIDTH.sub("-w*-", c.task, count=1) for c in fcells}, reverse=True)  # mu... first
    if len(names) == 1:
        return names[0]
    heads = [n.split("-w*-", 1) for n in names]
    if all(len(h) == 2 for h in heads) and len({h[1] for h in heads}) == 1:
        return " / ".join(h[0] for h in heads) + "-w*-" + heads[0][1]
    return " / ".join(names)


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


# ---------------------------------------------------------------------------------------------------------------------


def default_report_dir(run_dirs: Sequence[str | os.PathLike]) -> Path:
    """The report's own directory, next to the first run directory: ``report_<first run>[+<n>more]``."""
    first = Path(run_dirs[0]).resolve()
    name = f"report_{first.name}" + (f"+{len(run_dirs) - 1}more" if len(run_dirs) > 1 else "")
    return first.parent / name[:200]


def make_report(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                frac: float = 0.05) -> Path:
    """Write the figures, report.md and results.json; return the report directory (``default_report_dir`` unless
    ``out_dir``). Meta-train run directories get their meta-loss figure; meta-test ones the tables and curves."""
    from mulo.evaluate.report_meta_train import is_meta_train_dir, meta_train_section

    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise ReportError(f"not a directory: {d}")
    train_dirs = [d for d in dirs if not (d / MANIFEST).is_file() and is_meta_train_dir(d, _read_metrics)]
    test_dirs = [d for d in dirs if d not in train_dirs]
    out = Path(out_dir) if out_dir is not None else default_report_dir(run_dirs)
    from mulo.rundir import check_writable

    check_writable(out, "report directory")  # one line before any figure is drawn
    cells = aggregate(load_runs(test_dirs, frac)) if test_dirs or not train_dirs else []
    out.mkdir(parents=True, exist_ok=True)
    figures, sections = [], []
    for d in train_dirs:
        text, fig = meta_train_section(d, out, _read_metrics)
        sections.append(text + (f"\n![{fig}]({fig})\n" if fig else ""))
        if fig:
            figures.append(fig)
    by_family: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        by_family[c.family].append(c)
    test_figures = []
    for fam, fcells in by_family.items():
        if any(c.width is not None for c in fcells):
            p = out / f"loss_vs_width_{_safe(fam)}.png"
            plot_vs_width(fam, fcells, p)
            test_figures.append(p.name)
        p = out / f"curves_{_safe(fam)}.png"
        plot_curves(fam, fcells, p)
        test_figures.append(p.name)
    parts = []
    if cells:
        parts.append(markdown(cells, frac) + "\n" + "\n".join(f"![{f}]({f})" for f in test_figures) + "\n")
    parts += sections
    atomic_write_text(out / "report.md", "\n".join(parts))
    atomic_write_json(out / "results.json", [
        {"optimizer": c.label, "task": c.task, "family": c.family, "width": c.width, "seeds": c.n,
         "diverged": c.n_diverged, "final_train_loss_mean": c.mean, "final_train_loss_se": c.se,
         "test_loss_mean": c.test_mean,
         "per_seed": {str(r.seed): (None if r.diverged else r.final) for r in c.runs}} for c in cells])
    return out


def main(cfg: Any, args: Any) -> int:
    """``report`` command handler: ``args.run_dirs``; ``--output_dir`` (when given) is the report directory, else
    the report gets its own directory next to the first run directory (``default_report_dir``)."""
    out = getattr(args, "key__output_dir", None)
    path = make_report(args.run_dirs, out, frac=cfg.sweep_objective_frac)
    print(f"[report] {path / 'report.md'}")
    print("\n".join(line for line in (path / "report.md").read_text(encoding="utf-8").splitlines()
                    if not line.startswith("![")))
    return 0
