"""Checks every command makes before it creates or compiles anything: the data can be read, the step can fit in
memory. Each failure is one ``MuloError`` line; nothing has been written when one is raised.

The memory estimates (see ``mulo.app.memory``) take exact parameter and state sizes from ``jax.eval_shape`` of the
initialisers (abstract: no allocation, no compilation) and count only buffers that must exist together.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from mulo.errors import DataError, MuloError, one_line
from mulo.app.memory import Footprint, add, check_fits, example_bytes, footprint, tree_bytes


def check_data(tasks: Sequence[Any], splits: Iterable[str]) -> None:
    """Read the first example of every split of every task's dataset (datasets shared by tasks are read once, and
    what they load stays loaded for the run). A missing or damaged dataset raises DataError."""
    splits = list(dict.fromkeys(splits))
    seen = set()
    for task in tasks:
        ds = task.dataset
        if id(ds) in seen:
            continue
        seen.add(id(ds))
        for split in splits:
            try:
                first = next(iter(ds.eval_batches(split, 1, 1)), None)
            except MuloError:
                raise
            except Exception as exc:  # a reader's unexpected failure on a damaged file is still one line
                raise DataError(f"cannot read the {split} split of {ds.name}: {type(exc).__name__}: "
                                f"{one_line(exc)}") from None
            if first is None:
                raise DataError(f"the {split} split of {ds.name} is empty")


def _shapes(task: Any, make_optimizer: Callable[[Any, Any], Any], theta: Any, num_steps: int) -> int:
    """Bytes of one model: the optimizer's state, or the parameters when the state does not hold them."""
    import jax

    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(task.init, key)
    state = jax.eval_shape(lambda th, p: make_optimizer(task, th).init(p, num_steps), theta, params)
    return max(tree_bytes(params), tree_bytes(state))


def _batch(task: Any, examples: int) -> int:
    return int(examples) * example_bytes(task.dataset.example_spec())


def meta_train_footprint(cfg: Any, tasks: Sequence[Any], lo: Any, splits: Sequence[str] = ("train",)) -> Footprint:
    """Meta-training: per task, 2 x num_tasks inner models (the antithetic pairs), the meta-parameters with their
    Adam moments and one perturbation per pair, and ``prefetch_batches`` chunks of (steps_per_jit, num_tasks,
    local_batch_size) examples per split on the device (one more being built on the host)."""
    import jax

    theta = jax.eval_shape(lo.init_theta, jax.random.PRNGKey(0))
    total = Footprint(0, 0)
    for task in tasks:
        model = _shapes(task, lambda t, th: lo.opt_fn(th, t.update_scales), theta, cfg.num_inner_steps)
        chunk = _batch(task, cfg.steps_per_jit * cfg.num_tasks * cfg.local_batch_size) * max(1, len(splits))
        total = add(total, footprint(model, 2 * cfg.num_tasks, chunk, cfg.prefetch_batches,
                                     theta=tree_bytes(theta), theta_copies=3 + cfg.num_tasks, host_batches=1))
    return total


def loop_footprint(cfg: Any, task: Any, make_optimizer: Callable[[Any], Any], batch_size: int, steps_per_jit: int,
                   num_steps: int) -> Footprint:
    """One training run (meta-test, sweep trial, coordinate check): the model, one chunk of ``steps_per_jit``
    batches on the device and on the host."""
    model = _shapes(task, lambda t, _: make_optimizer(t), None, num_steps)
    return footprint(model, 1, _batch(task, steps_per_jit * batch_size), 1, host_batches=1)


def check_loops(cfg: Any, tasks: Sequence[Any], make_optimizer: Callable[[Any], Any], what: str,
                batch_size: int | None = None, steps_per_jit: int | None = None) -> None:
    """Every task's training run must fit (they run one after the other)."""
    for task in tasks:
        need = loop_footprint(cfg, task, make_optimizer, batch_size or cfg.local_batch_size,
                              steps_per_jit or min(cfg.test_steps_per_jit, cfg.num_inner_steps), cfg.num_inner_steps)
        check_fits(need, f"{what} of {task.name}")
