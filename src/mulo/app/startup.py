"""The lines a command prints before its first (slow) step, so that a minute of compiling is not a mystery:

    [meta-test] backend cpu: 1 device (cpu), 1 process
    [meta-test] run directory checkpoints/meta-test_muadam_lr0.1_mumlp-w128-d3_fashionmnist-28x28x1
    [meta-test] wandb offline: one run per seed under <run dir>/<task>/seed<k>/wandb (upload: wandb sync ...)
    [meta-test] mumlp-w128-d3_fashionmnist-28x28x1: compiling (first step only) ...

``banner`` gives the first three, ``compiling_line`` the last; ``announce`` prints the banner.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

COMPILING = "compiling (first step only) ..."


def device_line() -> str:
    """``backend <platform>: <n> device(s) (<kinds>), <p> process(es)``: what JAX will run on."""
    import jax

    devices = jax.devices()
    kinds = Counter(str(getattr(d, "device_kind", d.platform)) for d in devices)
    kind_text = ", ".join(f"{n} x {k}" if n > 1 else k for k, n in kinds.items())
    procs = jax.process_count()
    return (f"backend {jax.default_backend()}: {len(devices)} device{'s' if len(devices) != 1 else ''} "
            f"({kind_text}), {procs} process{'es' if procs != 1 else ''}")


def wandb_line(cfg: Any, run_dir: str | os.PathLike, runs_under: str = "") -> str | None:
    """The one line that says where wandb puts this invocation's runs (None when wandb is off). ``runs_under``:
    where, inside the run directory, the per-seed or per-trial runs are (e.g. ``<task>/seed<k>``)."""
    from mulo.app.runlog import wandb_mode

    mode = wandb_mode(cfg)
    if mode == "disabled":
        return None
    where = Path(run_dir) / runs_under / "wandb" if runs_under else Path(run_dir) / "wandb"
    if mode == "offline":
        return f"wandb offline: runs saved under {where} (upload later: wandb sync <that folder>/offline-run-*)"
    entity = f"{cfg.wandb_entity}/" if cfg.wandb_entity else ""
    return f"wandb online: project {entity}{cfg.wandb_project}, runs grouped as {Path(run_dir).name}"


def banner(command: str, cfg: Any, run_dir: str | os.PathLike, runs_under: str = "") -> list[str]:
    lines = [device_line(), f"run directory {run_dir}", wandb_line(cfg, run_dir, runs_under)]
    return [f"[{command}] {line}" for line in lines if line]


def announce(command: str, cfg: Any, run_dir: str | os.PathLike, runs_under: str = "") -> None:
    for line in banner(command, cfg, run_dir, runs_under):
        print(line, flush=True)


def compiling_line(command: str, what: str | None = None) -> str:
    return f"[{command}] {what + ': ' if what else ''}{COMPILING}"
