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

The runs are read, labelled and aggregated in ``report_runs``, drawn in ``report_plots``; this module writes the
tables and the report directory.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from mulo.evaluate.train_loop import final_loss_text
from mulo.layout import MANIFEST
from mulo.evaluate.report_plots import plot_curves, plot_vs_width
from mulo.evaluate.report_runs import Cell, ReportError, aggregate, display_family, load_runs, read_metrics
from mulo.io import atomic_write_json, atomic_write_text


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
# the report directory


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", name.replace("*", "W"))


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
    train_dirs = [d for d in dirs if not (d / MANIFEST).is_file() and is_meta_train_dir(d, read_metrics)]
    test_dirs = [d for d in dirs if d not in train_dirs]
    out = Path(out_dir) if out_dir is not None else default_report_dir(run_dirs)
    cells = aggregate(load_runs(test_dirs, frac)) if test_dirs or not train_dirs else []
    out.mkdir(parents=True, exist_ok=True)
    figures, sections = [], []
    for d in train_dirs:
        text, fig = meta_train_section(d, out, read_metrics)
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
