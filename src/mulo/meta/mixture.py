"""How the tasks of a multi-task (multi-family) meta-training run are told apart and weighed (``mulo.meta.train``):
each task's family (for per-family metrics), batch size (``task_batch_sizes``) and meta-loss scale
(``meta_loss_norm="init_loss"``: the meta-loss at initialisation, see ``mulo.meta.train``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mulo.data.transfer import device_decoder, host_kwargs
from mulo.errors import ConfigError
from mulo.registry import META_LOSS_NORMS


def task_family(task: Any) -> str:
    """The family a task's meta-loss is grouped under: its registered task family (mlp, transformer, vit), or for a
    task without a parsed name the part of its name before the first '-' or '_'."""
    spec = getattr(task, "spec", None)
    family = getattr(spec, "family", None)
    return family if isinstance(family, str) else task.name.split("_")[0].split("-")[0]


def task_batch_sizes(cfg, num_tasks: int) -> tuple[int, ...]:
    """The batch size of each task: ``task_batch_sizes`` (one per task, in ``task`` order) or ``local_batch_size``."""
    sizes = cfg.task_batch_sizes
    if sizes is None:
        return (cfg.local_batch_size,) * num_tasks
    if len(sizes) != num_tasks:
        raise ConfigError(f"bad value {list(sizes)} for config key 'task_batch_sizes': expected one batch size per "
                          f"task ({num_tasks} tasks), or None for local_batch_size={cfg.local_batch_size} everywhere")
    return tuple(int(b) for b in sizes)


def divides_by_init_loss(meta_loss_norm: str) -> bool:
    """Whether ``meta_loss_norm`` (one of META_LOSS_NORMS) divides each task's meta-loss by its value at
    initialisation (``init_loss``) rather than taking the plain mean of the tasks' meta-gradients (``none``)."""
    if meta_loss_norm not in META_LOSS_NORMS:
        raise ConfigError(f"bad value {meta_loss_norm!r} for config key 'meta_loss_norm': expected one of "
                          f"{', '.join(META_LOSS_NORMS)}")
    return meta_loss_norm == "init_loss"


def init_loss_scale(task: Any, seed: int, task_index: int, num: int, batch_size: int, key: jax.Array) -> float:
    """c_j of ``meta_loss_norm="init_loss"``: the mean normalised loss (``task.normalizer``) of ``num`` freshly
    initialised optimizees (inits drawn from ``key``), each on its own training batch of ``batch_size`` (drawn from
    ``seed`` and ``task_index``, apart from every outer step's data). A pure function of its arguments."""
    dataset = task.dataset
    data = np.random.SeedSequence([int(seed), int(task_index), 0, 1]).generate_state(1)[0]  # not a step's stream
    chunk = next(dataset.batches("train", (1, num, batch_size), int(data), **host_kwargs(dataset, False)))
    batch = jax.tree.map(lambda x: x[0], device_decoder(dataset, None, by_split=True)({"train": chunk})["train"])
    keys = jax.random.split(key, num)

    def one(key, b):
        k_init, k_loss = jax.random.split(key)
        return task.normalizer(task.loss(task.init(k_init), b, k_loss))

    scale = float(jnp.mean(jax.jit(jax.vmap(one))(keys, batch)))
    if not (np.isfinite(scale) and scale > 0):
        raise ConfigError(f"meta_loss_norm=init_loss: task {task.name} has meta-loss {scale} at initialisation, not a "
                          f"positive number to divide by; use meta_loss_norm=none")
    return scale
