"""One small logger for every command: metrics.jsonl always, wandb too unless it is disabled.

``wandb_mode`` comes from the config (offline by default); the ``WANDB_MODE`` environment variable wins, so CI and
tests can turn wandb off without touching configs. wandb itself prints nothing (``silent``): a command prints one line
saying where its runs go (``mulo.app.startup.wandb_line``), not ~20 lines per seed or trial.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from mulo.app.config import Config
from mulo.io import MetricsLog


def wandb_mode(cfg: Config) -> str:
    return os.environ.get("WANDB_MODE", cfg.wandb_mode)


class RunLogger(MetricsLog):
    """Append metrics as JSON lines to ``<run_dir>/<filename>`` (``mulo.io.MetricsLog``) and mirror them to wandb."""

    def __init__(self, run_dir: str | os.PathLike, cfg: Config, *, group: str | None = None,
                 name: str | None = None, filename: str = "metrics.jsonl", job_type: str | None = None,
                 extra_config: Mapping[str, Any] | None = None, resume_id: str | None = None):
        super().__init__(run_dir, filename)
        self._wandb_run = None
        mode = wandb_mode(cfg)
        if mode != "disabled":
            import wandb

            self._wandb_run = wandb.init(
                project=cfg.wandb_project, entity=cfg.wandb_entity, group=group, name=name, job_type=job_type,
                mode=mode, dir=str(self.run_dir), config={**cfg.to_dict(), **(extra_config or {})},
                id=resume_id, resume="allow" if resume_id else None, reinit="create_new",
                settings=wandb.Settings(silent=True))  # the command says once where its runs go (mulo.app.startup)

    @property
    def wandb_run(self):
        return self._wandb_run

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        record = self.record(step, metrics)
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=int(step))

    def close(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

