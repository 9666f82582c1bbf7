"""What meta-training reads besides its built objects (the LO, the estimator, the truncation schedule, the tasks):
the run-level settings (``TrainSettings``) and the identity a checkpoint must match to be resumed.

``mulo.meta.train.train(settings, tasks, lo, estimator, truncation, run_dir)`` takes these; the estimator is the one
source of the antithetic pairs per task (``estimator.hparams.num_pairs``), the truncation schedule of the episode
length (``truncation.max_length``, the run's ``num_inner_steps``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping



@dataclass(frozen=True)
class TrainSettings:
    """The run-level config keys the meta-trainer reads, each named as its config key (defaults: config/base.py)."""

    task: tuple[str, ...]  # the task names, as given (identity and θ files)
    seed: int
    num_outer_steps: int
    steps_per_jit: int
    local_batch_size: int
    task_batch_sizes: tuple[int, ...] | None
    meta_loss_split: str
    meta_loss_norm: str
    use_bf16: bool
    data_on_device: str
    prefetch_batches: int
    data_parallel: int
    meta_learning_rate: float
    schedule: Mapping[str, Any]
    meta_weight_decay: float
    meta_grad_clip: float | None
    save_iter: int
    checkpoints_to_keep: int
    auto_resume: bool
    log_every: int
    progress: bool

    @classmethod
    def from_config(cls, cfg: Any) -> "TrainSettings":
        """The settings from a config (a mapping or a ``mulo.app.config.Config``) holding these keys."""
        get = (lambda k: cfg[k]) if hasattr(cfg, "__getitem__") else (lambda k: getattr(cfg, k))
        values = {f.name: get(f.name) for f in dataclasses.fields(cls)}
        values["task"] = tuple(values["task"])
        sizes = values["task_batch_sizes"]
        values["task_batch_sizes"] = None if sizes is None else tuple(sizes)
        values["schedule"] = dict(values["schedule"] or {})
        return cls(**values)

    def replace(self, **changes) -> "TrainSettings":
        return dataclasses.replace(self, **changes)


def identity(settings: TrainSettings, lo: Any, estimator: Any, truncation: Any, init_theta: Any = None) -> dict:
    """What must match for a resume (``identity.json`` of the checkpoints): the entries, names and values that
    runs written before the config sections have, so that they resume (the names are today's flat config keys);
    with a warm start, the SHA-256 of its θ (``theta_digest``), so that a run is not continued from another start."""
    est = estimator.hparams
    hp = lo.hparams
    name = getattr(lo, "name", type(lo).__name__)
    out = {"task": list(settings.task), "optimizer": name, "seed": settings.seed, "num_tasks": est.num_pairs,
           "gradient_estimator": estimator.name, "trunc_length": est.trunc_length,
           "steps_per_jit": settings.steps_per_jit, "pes_std": est.std, "local_batch_size": settings.local_batch_size,
           "meta_loss_split": settings.meta_loss_split, "truncation_schedule": truncation.kind,
           "truncation_schedule_min_length": truncation.min_length, "num_inner_steps": truncation.max_length,
           "random_initial_iteration_offset": truncation.initial_offset}
    if settings.meta_loss_norm != "none":  # only when set, so that runs from before these keys still resume
        out["meta_loss_norm"] = settings.meta_loss_norm
    if settings.task_batch_sizes is not None:
        out["task_batch_sizes"] = list(settings.task_batch_sizes)
    if init_theta is not None:
        out["init_theta_sha256"] = theta_digest(init_theta)
    return {**out, "lo": name,
            "lo_hparams": dataclasses.asdict(hp) if dataclasses.is_dataclass(hp) else hp,
            "num_processes": _process_count()}


def _process_count() -> int:
    import jax

    return jax.process_count()


def theta_digest(theta: Any) -> str:
    """SHA-256 (hex) of a θ tree: its leaves' float32 bytes in tree order, with their paths and shapes."""
    import hashlib

    import jax
    import numpy as np

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
        arr = np.ascontiguousarray(np.asarray(jax.device_get(leaf), dtype=np.float32))
        h.update(f"{jax.tree_util.keystr(path)}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()
