"""Copy a meta-trained θ into pretrained/ with its config and meta-training curve, for `--checkpoint pretrained:NAME`.

    python scripts/ship_pretrained.py RUN_DIR NAME [--step N]

Writes pretrained/NAME.msgpack (θ at the end of the run, or at outer step N: theta/theta_stepN.msgpack),
pretrained/NAME.config.py (the run's resolved config), pretrained/NAME.meta_loss.csv (step, meta_loss, per-task
and per-family meta-losses) and pretrained/NAME.meta_loss.png (the meta-loss and its 25-step running mean; of a
mixed-family run, each family's running mean too). The model card
pretrained/NAME.md is written by hand; NAME must be listed in mulo.pretrained.PRETRAINED.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
from pathlib import Path

from mulo.io import atomic_write_bytes, atomic_write_text, read_jsonl
from mulo.optimizers import load_theta
from mulo.pretrained import PRETRAINED_DIR


def _curve(records: list[dict]) -> tuple[list[str], list[list[float]]]:
    tasks = sorted({k for r in records for k in r if k.startswith(("meta_loss/", "meta_loss_family/"))})
    cols = ["step", "meta_loss", *tasks]
    rows = [[r["step"], r["meta_loss"], *(r.get(t, float("nan")) for t in tasks)] for r in records
            if "meta_loss" in r]
    return cols, rows


def _plot(cols, rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([r[0] for r in rows])
    loss = np.array([r[1] for r in rows])
    k = 25
    families = [i for i, c in enumerate(cols) if c.startswith("meta_loss_family/")]
    fig, axes = plt.subplots(1, 2 if families else 1, figsize=(11 if families else 6, 3.5), squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="meta-loss")
    if len(loss) >= k:
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), lw=1.5, label=f"{k}-step mean")
    ax.set_xlabel("outer step")
    ax.set_ylabel("meta-loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    if families:  # one curve per task family (its k-step mean over the steps where it was logged)
        ax = axes[0][1]
        for i in families:
            pts = np.array([(r[0], r[i]) for r in rows if np.isfinite(r[i])])
            if len(pts) >= k:
                ax.plot(pts[k - 1:, 0], np.convolve(pts[:, 1], np.ones(k) / k, mode="valid"), lw=1.5,
                        label=cols[i].split("/", 1)[1])
        ax.set_xlabel("outer step")
        ax.set_ylabel(f"meta-loss / loss scale ({k}-step mean)")
        ax.set_title("per task family", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name")
    ap.add_argument("--step", type=int, default=None, help="ship theta/theta_step<N>.msgpack instead of theta_final")
    args = ap.parse_args(argv)
    run = args.run_dir
    theta = run / "theta_final.msgpack" if args.step is None else run / "theta" / f"theta_step{args.step}.msgpack"
    if not theta.is_file():
        print(f"error: no theta file {theta}", file=sys.stderr)
        return 2
    load_theta(theta)  # refuse a damaged file before copying it
    PRETRAINED_DIR.mkdir(exist_ok=True)
    out = PRETRAINED_DIR / args.name
    atomic_write_bytes(out.with_suffix(".msgpack"), theta.read_bytes())
    shutil.copyfile(run / "config.py", PRETRAINED_DIR / f"{args.name}.config.py")
    records = list(read_jsonl(run / "metrics.jsonl"))
    if args.step is not None:
        records = [r for r in records if int(r.get("step", 0)) <= args.step]
    cols, rows = _curve(records)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    writer.writerows([[f"{x:.6g}" if isinstance(x, float) else x for x in row] for row in rows])
    atomic_write_text(PRETRAINED_DIR / f"{args.name}.meta_loss.csv", buf.getvalue())
    _plot(cols, rows, PRETRAINED_DIR / f"{args.name}.meta_loss.png", f"{args.name}: meta-training ({len(rows)} steps)")
    print(f"shipped {theta} ({len(rows)} outer steps) as {out.with_suffix('.msgpack')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
