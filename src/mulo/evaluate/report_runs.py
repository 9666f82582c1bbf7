"""The report's data (``mulo.evaluate.report``): meta-test runs read from their run directories (summary, metrics,
manifest; damaged files skipped with a warning), labelled by what tells their directories apart, and aggregated per
(optimizer, task) over seeds."""

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
from mulo.evaluate.train_loop import final_loss_text, tail_mean
from mulo.layout import MANIFEST, METRICS, SUMMARY
from mulo.io import read_jsonl

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


def _final(summary: dict, losses: np.ndarray, frac: float) -> float:
    """The run's final train loss, as meta-test defined it in its summary (``run_summary``) when it used this
    ``frac``; else the same definition (``tail_mean``) computed from the logged losses."""
    value = summary.get("final_train_loss")
    if summary.get("final_train_loss_def") == final_loss_text(frac) and isinstance(value, (int, float)):
        return float(value)
    return tail_mean(list(losses), frac)


def _name_label(name: str, hparams: dict) -> str:
    """What follows a learned optimizer's name in its run names (``mulo.app.rundir.run_name``: the value of its
    registration's ``label_key``), read from θ's hyper-parameters: ``hidden_size`` 32 in ``mup_small_fc_mlp32``,
    ``lstm_hidden_size`` 16 in ``velo16``; "" for an optimizer with none (or not registered)."""
    from mulo.registry import LEARNED_OPTIMIZERS

    spec = LEARNED_OPTIMIZERS.get(name)
    key = spec.config_keys.get(spec.label_key) if spec is not None and spec.label_key else None
    value = hparams.get(key) if key else None
    return "" if value is None else str(value)


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
        prefix = f"meta-train_{name}{_name_label(name, hparams)}_"
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


def read_metrics(path: Path) -> list[dict]:
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
    runs, run_dirs = [], []
    for d in dirs:
        for summary_path in sorted(d.glob(f"*/seed*/{SUMMARY}")):
            seed_dir = summary_path.parent
            if not re.fullmatch(r"seed\d+", seed_dir.name):
                continue  # runs moved aside (seed3.old-...)
            summary = _read_summary(summary_path)
            if summary is None:
                continue
            records = read_metrics(seed_dir / METRICS)
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
            run_dirs.append(d)
    if not runs:
        raise ReportError("no meta-test results (<task>/seed<k>/summary.json) in " + ", ".join(map(str, dirs)))
    return _tell_apart(runs, run_dirs)


def _tell_apart(runs: list[Run], run_dirs: list[Path]) -> list[Run]:
    """Runs of directories with one label are one optimizer (e.g. a row's widths meta-tested in two commands) unless
    two of those directories hold the same (task, seed): then each of them is labelled by its directory's name."""
    owners: dict[tuple, set] = defaultdict(set)
    for r, d in zip(runs, run_dirs):
        owners[(r.label, r.task, r.seed)].add(d)
    clash = {d for ds in owners.values() if len(ds) > 1 for d in ds}
    clashing_labels = {r.label for r, d in zip(runs, run_dirs) if d in clash}
    for r, d in zip(runs, run_dirs):
        if r.label in clashing_labels:
            r.label = d.name
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

