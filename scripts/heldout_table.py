"""The held-out suite's table: every row of ``scripts/heldout_suite.sh OUT_DIR`` in one markdown table.

    python scripts/heldout_table.py OUT_DIR [--frac 0.05]

For each row folder of OUT_DIR (config/meta_test/heldout/<row>.py) and each of its tasks: the final train loss (mean
of the last ``frac`` of the steps; mean ± standard error over seeds) of tuned MuAdam and of each learned optimizer
that was meta-tested there, and each learned optimizer's ratio to MuAdam (below 1: it wins; ✓ win, ≈ within 5%, ✗
more than 5% worse; a diverged seed is counted in the cell as "k/n diverged").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mulo.evaluate.report_runs import ReportError, aggregate, load_runs


def _fmt(cell) -> str:
    if cell is None:
        return "—"
    if cell.mean is None:
        return f"{cell.n_diverged}/{cell.n} diverged"
    text = f"{cell.mean:.3f}" + (f" ± {cell.se:.3f}" if cell.n_ok > 1 else "")
    return text + (f" ({cell.n_diverged}/{cell.n} diverged)" if cell.n_diverged else "")


def _short(label: str) -> str:
    """``mup_small_fc_mlp (θ pretrained:NAME)`` -> ``NAME``; other labels as they are."""
    return label.split("(θ pretrained:", 1)[1].rstrip(")") if "(θ pretrained:" in label else label


def _verdict(ratio: float) -> str:
    return "✓" if ratio < 1.0 else ("≈" if ratio <= 1.05 else "✗")


def table(out_dir: Path, frac: float = 0.05) -> str:
    rows, learned, baseline_labels = [], [], {}
    for row_dir in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        runs = sorted(row_dir.glob("meta-test_*"))
        if not runs:
            continue
        try:
            cells = aggregate(load_runs(runs, frac))
        except ReportError:  # a row whose runs have not finished a seed yet
            continue
        for cell in cells:
            if cell.label.startswith("muadam"):
                baseline_labels[row_dir.name] = cell.label
            elif cell.label not in learned:
                learned.append(cell.label)
        for task in dict.fromkeys(c.task for c in cells):
            by_label = {c.label: c for c in cells if c.task == task}
            rows.append((row_dir.name, task, by_label))
    if not rows:
        raise ReportError(f"no meta-test runs in the row folders of {out_dir}")
    head = ["row", "task", "MuAdam (tuned lr)", *map(_short, learned),
            *(f"{_short(lab)} / MuAdam" for lab in learned)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, task, by_label in rows:
        base = by_label.get(baseline_labels.get(row, ""))
        cols = [row, task, (_fmt(base) + f" (lr {base.label.split('lr=')[-1]})") if base else "—"]
        cols += [_fmt(by_label.get(lab)) for lab in learned]
        for lab in learned:
            cell = by_label.get(lab)
            if base is None or base.mean is None or cell is None or cell.mean is None:
                cols.append("—")
            else:
                r = cell.mean / base.mean
                cols.append(f"{r:.3f} {_verdict(r)}")
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--frac", type=float, default=0.05)
    args = ap.parse_args(argv)
    try:
        print(table(args.out_dir, args.frac), end="")
    except (ReportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
