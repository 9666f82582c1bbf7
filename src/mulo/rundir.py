"""Run directories: ``<output_dir>/<run_name>/`` with the resolved config, metrics.jsonl, checkpoints and plots."""

from __future__ import annotations

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


def run_name(cfg: Config, kind: str) -> str:
    """``{kind}_{optimizer}[hidden]_{tasks}{suffix}``, e.g. ``meta-train_mup_small_fc_mlp32_mumlp-w128-d3_...``."""
    opt = cfg.optimizer + (str(cfg.hidden_size) if cfg.optimizer in LEARNED else "")
    name = f"{kind}_{opt}_{tasks_label(list(cfg.task))}{cfg.name_suffix}"
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", name)


def make_run_dir(cfg: Config, kind: str) -> Path:
    """Create (or reuse) the run directory and write the resolved config into it atomically."""
    path = Path(cfg.output_dir) / run_name(cfg, kind)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "config.py", dump_text(cfg))
    return path
