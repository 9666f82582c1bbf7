"""``python src/main.py report RUN_DIR ...``: figures and tables of meta-test (and meta-train) run directories
(``mulo.evaluate.report.make_report``) in a report directory checked writable first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mulo.app.rundir import check_writable
from mulo.evaluate.report import default_report_dir, make_report


def main(cfg: Any, args: Any) -> int:
    """``report`` command handler: ``args.run_dirs``; ``--output_dir`` (when given) is the report directory, else
    the report gets its own directory next to the first run directory (``default_report_dir``)."""
    out = getattr(args, "key__output_dir", None)
    check_writable(Path(out) if out is not None else default_report_dir(args.run_dirs),
                   "report directory")  # one line before any figure is drawn
    path = make_report(args.run_dirs, out, frac=cfg.sweep_objective_frac)
    print(f"[report] {path / 'report.md'}")
    print("\n".join(line for line in (path / "report.md").read_text(encoding="utf-8").splitlines()
                    if not line.startswith("![")))
    return 0
