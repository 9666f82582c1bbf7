"""One small logger for every command: metrics.jsonl always, wandb too unless it is disabled.

``wandb_mode`` comes from the config (offline by default); the ``WANDB_MODE`` environment variable wins, so CI and
tests can turn wandb off without touching configs. wandb itself prints nothing (``silent``): a command prints one line
saying where its runs go (``mulo.startup.wandb_line``), not ~20 lines per seed or trial.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from mulo.config import Config
from mulo.io import append_line, atomic_write_text, read_jsonl, to_json_line


def wandb_mode(cfg: Config) -> str:
    return os.environ.get("WANDB_MODE", cfg.wandb_mode)


def _clean(value: Any) -> Any:
    """jax/numpy scalars -> floats; keep None/str/bool/int."""
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else (str(value))


class RunLogger:
    """Append metrics as JSON lines to ``<run_dir>/<filename>`` and mirror them to wandb."""

    def __init__(self, run_dir: str | os.PathLike, cfg: Config, *, group: str | None = None,
                 name: str | None = None, filename: str = "metrics.jsonl", job_type: str | None = None,
                 extra_config: Mapping[str, Any] | None = None, resume_id: str | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / filename
        self._wandb_run = None
        mode = wandb_mode(cfg)
        if mode != "disabled":
            import wandb

            self._wandb_run = wandb.init(
                project=cfg.wandb_project, entity=cfg.wandb_entity, group=group, name=name, job_type=job_type,
                mode=mode, dir=str(self.run_dir), config={**cfg.to_dict(), **(extra_config or {})},
                id=resume_id, resume="allow" if resume_id else None, reinit="create_new",
                settings=wandb.Settings(silent=True))  # the command says once where its runs go (mulo.startup)

    @property
    def wandb_run(self):
        return self._wandb_run

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        record = {"step": int(step), "time": time.time(), **{k: _clean(v) for k, v in metrics.items()}}
        append_line(self.path, to_json_line(record))
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=int(step))

    def close(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _is_step(step: Any) -> bool:
    return isinstance(step, int) and not isinstance(step, bool)


def trim_metrics(path: str | os.PathLike, last_step: int) -> None:
    """On resume: keep the records up to ``last_step`` (steps redone after a resume would otherwise appear twice).
    Damaged lines (not JSON, binary garbage) and records whose ``step`` is not an integer are dropped with one
    warning line naming the file and the lines; the run continues."""
    path = Path(path)
    if not path.is_file():
        return
    bad: list[int] = []
    numbers: list[int] = []
    records = read_jsonl(path, bad, numbers)
    bad += [n for n, r in zip(numbers, records) if not _is_step(r.get("step"))]
    if bad:
        bad.sort()
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        print(f"warning: {path}: dropped {len(bad)} damaged line(s) (line {shown}: not a JSON record with an integer "
              f"step); resuming", file=sys.stderr)
    kept = [r for r in records if _is_step(r.get("step")) and r["step"] <= last_step]
    atomic_write_text(path, "".join(to_json_line(r) for r in kept))
