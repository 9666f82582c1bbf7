"""The meta-trainer: per task a truncated estimator over its inner problems, the outer optimizer, and one outer step
(``mulo.meta.train`` runs the loop; its docstring describes the method, the mixing of tasks and reproducibility).

    trainer = MetaTrainer(settings, tasks, lo, estimator, truncation)
    state = trainer.init_state()                       # θ, outer optimizer, one estimator state per task
    state, metrics = trainer.step(state, trainer.streams(0))
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mulo.data.transfer import device_decoder, host_kwargs, resident_images, wants_resident
from mulo.errors import ConfigError
from mulo.meta import outer
from mulo.meta.estimators import TruncatedEstimator
from mulo.meta.mixture import divides_by_init_loss, init_loss_scale, task_batch_sizes, task_family
from mulo.meta.settings import TrainSettings, identity
from mulo.meta.unroll import TruncatedUnroll
from mulo.parallel import Placement


class TrainState(NamedTuple):
    step: jax.Array  # int32: outer steps done
    theta: Any
    opt_state: Any
    estimators: tuple  # one PESState / ESState per task
    skipped: jax.Array  # int32: outer steps whose meta-gradient was non-finite (no update applied)


def data_seed(seed: int, task_index: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(task_index), int(step)]).generate_state(1)[0])


def checked_init_theta(lo: Any, theta: Any) -> Any:
    """``theta`` (a warm start) as float32 arrays, after checking that its tree and shapes are those of ``lo``'s own
    initial θ (ConfigError otherwise)."""
    want = jax.eval_shape(lo.init_theta, jax.random.PRNGKey(0))
    got = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), theta)
    if jax.tree.structure(want) != jax.tree.structure(got) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got))):
        raise ConfigError(f"init_theta does not fit learned optimizer {getattr(lo, 'name', lo)!r} with its "
                          f"hyper-parameters (other parameter tree or shapes)")
    return got


def _key(seed: int, *path: int) -> jax.Array:
    key = jax.random.PRNGKey(seed)
    for p in path:
        key = jax.random.fold_in(key, p)
    return key


class MetaTrainer:
    """Estimators, outer optimizer and the jitted outer update for ``tasks`` and ``lo``: each task's inner problems
    are ``estimator.hparams.num_pairs`` antithetic pairs whose episodes ``truncation`` draws."""

    def __init__(self, settings: TrainSettings, tasks: Sequence[Any], lo: Any, estimator: Any, truncation: Any,
                 placement: Placement | None = None, init_theta: Any = None):
        trunc_length = estimator.hparams.trunc_length
        if trunc_length % settings.steps_per_jit:
            raise ConfigError(f"steps_per_jit={settings.steps_per_jit} must divide trunc_length={trunc_length}")
        self.settings = settings
        self.tasks = list(tasks)
        self.lo, self.estimator, self.truncation = lo, estimator, truncation
        self.init_theta = None if init_theta is None else checked_init_theta(lo, init_theta)
        self.num_pairs = estimator.hparams.num_pairs
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate task in --task {','.join(names)}")
        self.placement = placement or Placement.create(data_parallel=settings.data_parallel)
        self.batch_sizes = task_batch_sizes(settings, len(self.tasks))
        for b in self.batch_sizes:
            self.placement.check(self.num_pairs, b)
        self.families = tuple(task_family(t) for t in self.tasks)
        donate = jax.default_backend() != "cpu"
        self.estimators = [
            TruncatedEstimator(TruncatedUnroll(t, lo, truncation, self.num_pairs, settings.meta_loss_split,
                                               use_bf16=settings.use_bf16),
                               estimator, steps_per_jit=settings.steps_per_jit, donate=donate,
                               placement=self.placement)
            for t in self.tasks]
        self.tx, self.lr_fn = outer.build_outer_optimizer(dict(settings.schedule), settings.meta_learning_rate,
                                                          settings.meta_weight_decay, settings.meta_grad_clip)
        devices = list(self.placement.mesh.devices.flat)
        self.resident = tuple(wants_resident(settings.data_on_device, t.dataset, devices, e.unroll.data_splits)
                              for t, e in zip(self.tasks, self.estimators))  # datasets kept on the devices
        rep = self.placement.replicated
        self._outer = jax.jit(self._outer_update, out_shardings=rep)

    @functools.cached_property
    def loss_scales(self) -> tuple[float, ...] | None:
        """c_j per task (``meta_loss_norm="init_loss"``), or None for the plain mean; computed on first use (not by a
        trainer built only for its ``identity``)."""
        if not divides_by_init_loss(self.settings.meta_loss_norm):
            return None
        return tuple(init_loss_scale(t, self.settings.seed, j, self.num_pairs, b, _key(self.settings.seed, 3, j))
                     for j, (t, b) in enumerate(zip(self.tasks, self.batch_sizes)))

    # ---- state --------------------------------------------------------------------------------------------------

    def init_state(self) -> TrainState:
        seed = self.settings.seed
        theta = self.lo.init_theta(_key(seed, 0)) if self.init_theta is None else self.init_theta
        ests = tuple(e.init(theta, _key(seed, 1, j)) for j, e in enumerate(self.estimators))
        state = TrainState(jnp.zeros((), jnp.int32), theta, self.tx.init(theta), ests, jnp.zeros((), jnp.int32))
        return self.place(state)

    def state_shardings(self, state: TrainState) -> TrainState:
        """The sharding of every leaf of ``state`` (decided by ``mulo.parallel.Placement``): estimator states split
        over the pairs axis, everything else replicated."""
        rep = self.placement.replicated
        full = lambda tree, sharding: jax.tree.map(lambda _: sharding, tree)  # noqa: E731
        ests = tuple(jax.tree.map(lambda sharding, sub: full(sub, sharding), e.state_sharding, st,
                                  is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
                     for e, st in zip(self.estimators, state.estimators))
        return TrainState(rep, full(state.theta, rep), full(state.opt_state, rep), ests, rep)

    def place(self, state: TrainState) -> TrainState:
        """Place every array as ``state_shardings`` says, so that fresh, restored and jit-produced states share one
        sharding and the jitted steps compile once."""
        return self.placement.put(state, self.state_shardings(state))

    def identity(self) -> dict:
        return identity(self.settings, self.lo, self.estimator, self.truncation, self.init_theta)

    # ---- data ---------------------------------------------------------------------------------------------------

    def chunk_shape(self, j: int = 0) -> tuple[int, int, int]:
        """(S, N, B) of task j's data chunks."""
        return (self.settings.steps_per_jit, self.num_pairs, self.batch_sizes[j])

    def host_stream(self, j: int, start_step: int, part: tuple[slice, ...] | None = None) -> Iterator[dict]:
        """Chunks {split: {"x", "y"}} of shape (S, N, B, ...) for task j, from outer step ``start_step`` on; only
        the block ``part`` of each (this process's devices' share) when given."""
        seed, est = self.settings.seed, self.estimators[j]
        splits = est.unroll.data_splits
        dataset = self.tasks[j].dataset
        for step in itertools.count(start_step):
            step_seed = data_seed(seed, j, step)
            kw = {} if part is None else {"part": part}  # the whole chunk: any dataset with batches(split, shape, seed)
            kw.update(host_kwargs(dataset, self.resident[j]))  # uint8 images or indices, decoded on the device
            its = {sp: dataset.batches(sp, self.chunk_shape(j), step_seed, **kw) for sp in splits}
            for _ in range(est.num_chunks):
                yield {sp: next(its[sp]) for sp in splits}

    def streams(self, start_step: int) -> list:
        from mulo.data.prefetch import DevicePrefetcher

        replicate = lambda x: self.placement.put(x, self.placement.replicated)  # noqa: E731
        streams = []
        for j, (task, est) in enumerate(zip(self.tasks, self.estimators)):
            shape = self.chunk_shape(j)
            part = self.placement.local_block(shape)
            if part == tuple(slice(0, n) for n in shape):
                part = None
            put = self.placement.chunk_putter(shape)
            images = (resident_images(task.dataset, est.unroll.data_splits, replicate) if self.resident[j]
                      else None)
            streams.append(DevicePrefetcher(self.host_stream(j, start_step, part), size=self.settings.prefetch_batches,
                                            put=put, transform=device_decoder(task.dataset, images, by_split=True)))
        return streams

    # ---- one outer step -----------------------------------------------------------------------------------------

    def _outer_update(self, theta, opt_state, grads, skipped):
        grad = outer.combine_meta_gradients(grads, self.loss_scales)
        norm = optax.tree.norm(grad)  # the global norm (optax.global_norm's current name)
        theta, opt_state, finite = outer.apply_meta_gradient(self.tx, theta, opt_state, grad)
        return theta, opt_state, skipped + (~finite).astype(jnp.int32), norm, finite

    def step(self, state: TrainState, streams: Sequence[Iterator]) -> tuple[TrainState, dict]:
        s = int(state.step)
        scales = self.loss_scales or (1.0,) * len(self.tasks)  # first used outside the jitted update (baked in)
        grads, new_ests, per_task = [], [], []
        for j, (est, est_state) in enumerate(zip(self.estimators, state.estimators)):
            g, new, metrics = est.estimate(state.theta, est_state, _key(self.settings.seed, 2, s, j), streams[j])
            grads.append(g)
            new_ests.append(new)
            per_task.append(metrics)
        lr = self.lr_fn(s - int(state.skipped))  # the schedule counts applied updates
        theta, opt_state, skipped, norm, finite = self._outer(state.theta, state.opt_state, tuple(grads),
                                                              state.skipped)
        step = self.placement.put(np.asarray(s + 1, np.int32), self.placement.replicated)
        new_state = TrainState(step, theta, opt_state, tuple(new_ests), skipped)
        per_task = jax.device_get(per_task)
        metrics: dict[str, Any] = {}
        for task, m in zip(self.tasks, per_task):
            for k, v in m.items():
                metrics[f"{k}/{task.name}"] = float(v)
        metrics["meta_loss"] = float(np.mean([m["meta_loss"] for m in per_task]))
        for family in dict.fromkeys(self.families):
            rel = [float(m["meta_loss"]) / c for m, f, c in zip(per_task, self.families, scales) if f == family]
            metrics[f"meta_loss_family/{family}"] = float(np.mean(rel))
        if self.loss_scales is not None:
            metrics.update({f"loss_scale/{t.name}": c for t, c in zip(self.tasks, self.loss_scales)})
        metrics["meta_grad_norm"] = float(norm)
        metrics["lr"] = float(lr)
        metrics["nonfinite"] = int(not bool(finite))
        metrics["skipped_steps"] = int(skipped)
        return new_state, metrics
