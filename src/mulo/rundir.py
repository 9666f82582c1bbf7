"""Run directories: ``<output_dir>/<run_name>/`` with the resolved config, metrics.jsonl, checkpoints and plots."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from mulo.config import Config, dump_text
from mulo.io import atomic_write_text

LEARNED = ("small_fc_mlp", "mup_small_fc_mlp")
_WIDTH = re.compile(r"-w(\d+)-")


def tasks_label(tasks: list[str]) -> str:
    """One readable label for the task list: the task itself, or the family with its widths joined by '+'
    (``mumlp-w32+64+128-d3_fashionmnist-28x28x1``), or the first task and a count."""
    if len(tasks) == 1:
        return tasks[0]
    widths = [_WIDTH.search(t) for t in tasks]
    families = {_WIDTH.sub("-w*-", t, count=1) for t in tasks}
    if all(widths) and len(families) == 1:
        joined = "+".join(m.group(1) for m in widths)
        return _WIDTH.sub(f"-w{joined}-", tasks[0], count=1)
    return f"{tasks[0]}+{len(tasks) - 1}more"


def theta_label(path: str | os.PathLike) -> str:
    """``theta-<first 8 hex digits of the θ file's SHA-256>``: the same θ gives the same label wherever it lies,
    another θ (another run, another step) another one."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"theta-{digest.hexdigest()[:8]}"


def run_name(cfg: Config, kind: str, theta: str | None = None) -> str:
    """``{kind}_{optimizer}[hidden][_what]_{tasks}{suffix}``, where ``what`` tells runs of one optimizer apart:

    * a hand-designed optimizer's learning rate, ``lr0.01`` (not for sweeps, which vary it);
    * a learned optimizer's θ (``theta``, see ``theta_label``) when the user gave no ``name_suffix`` of their own.

    E.g. ``meta-train_mup_small_fc_mlp32_mumlp-w128-d3_...``, ``meta-test_muadam_lr0.1_mumlp-w64-d3_...``."""
    opt = cfg.optimizer + (str(cfg.hidden_size) if cfg.optimizer in LEARNED else "")
    if cfg.optimizer not in LEARNED and kind != "sweep":
        opt += f"_lr{cfg.learning_rate:g}"
    elif cfg.optimizer in LEARNED and theta and not cfg.name_suffix:
        opt += f"_{theta}"
    name = f"{kind}_{opt}_{tasks_label(list(cfg.task))}{cfg.name_suffix}"
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", name)


def make_run_dir(cfg: Config, kind: str, theta: str | None = None) -> Path:
    """Create (or reuse) the run directory and write the resolved config into it atomically."""
    path = Path(cfg.output_dir) / run_name(cfg, kind, theta)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "config.py", dump_text(cfg))
    return path
