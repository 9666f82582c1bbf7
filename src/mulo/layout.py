"""What lies where in a run directory: the one description that meta-train writes and meta-test reads.

Meta-train (``mulo.meta.train``)::

    <run>/theta/theta_step<N>.msgpack   θ with the LO's hyper-parameters (``mulo.optimizers.save_theta``), every save
    <run>/theta_final.msgpack           θ at the end of the run (what meta-test and export load)
    <run>/checkpoints/<N>/              the full orbax state of step N (``mulo.meta.checkpoint``)
    <run>/checkpoints/latest            text: the newest step N

Meta-test (``mulo.app.commands.meta_test``)::

    <run>/meta_test.json                the optimizer and one entry per run
    <run>/<task>/seed<k>/metrics.jsonl  one line per step
    <run>/<task>/seed<k>/summary.json   the run's outcome

mulo's own cache (downloads, the compilation cache, libraries' home folders): ``CACHE_ROOT``.

Pure paths: nothing here reads or writes files. The paper packages and the run machinery (``mulo.app``) both read
them, so this module lies below both.
"""

from __future__ import annotations

import os
from pathlib import Path

THETA_DIR = "theta"
THETA_FINAL = "theta_final"
THETA_STEP = "theta_step"  # + the step number
THETA_EXT = ".msgpack"  # mulo.optimizers.save_theta's format (flax msgpack)
CHECKPOINTS = "checkpoints"
LATEST = "latest"
CACHE_ROOT = "~/.cache/mulo"

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
MANIFEST = "meta_test.json"


def theta_step_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``<run>/theta/theta_step<N>.msgpack``."""
    return Path(run_dir) / THETA_DIR / f"{THETA_STEP}{int(step)}{THETA_EXT}"


def theta_final_path(run_dir: str | os.PathLike) -> Path:
    """``<run>/theta_final.msgpack``."""
    return Path(run_dir) / f"{THETA_FINAL}{THETA_EXT}"


def is_theta_step_file(path: Path, step: int) -> bool:
    """Whether ``path`` is the θ file of ``step`` (any extension, as files copied by hand may have)."""
    return path.name.startswith(f"{THETA_STEP}{step}.") or path.stem == f"{THETA_STEP}{step}"


def seed_dir(run_dir: str | os.PathLike, task_name: str, seed: int) -> Path:
    """``<run>/<task>/seed<k>``: one meta-test (or sweep) run."""
    return Path(run_dir) / task_name / f"seed{seed}"
