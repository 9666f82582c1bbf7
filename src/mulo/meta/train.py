"""The outer loop of PES/ES meta-training (``python src/main.py meta-train``: ``mulo.app.commands.meta_train``).

    state = trainer.init_state()                       # θ, outer optimizer, one estimator state per task
    for step in range(start, num_outer_steps):
        for each task j: ĝ_j, state_j = estimator_j.estimate(θ, state_j, key(step, j), data_j)
        θ ← AdamW(θ, mean_j ĝ_j / c_j)                  # skipped (and counted) if ĝ has a NaN/inf

**Mixing task families** (``mulo.meta.outer.combine_meta_gradients``). Task j's meta-loss is divided by a scale c_j
that ``meta_loss_norm`` picks: ``none`` (c_j = 1, the paper's plain mean) or ``init_loss`` (c_j = the task's
meta-loss at initialisation: the mean normalised loss of ``num_tasks`` freshly initialised optimizees on one batch,
``mulo.meta.mixture.init_loss_scale``). With ``init_loss`` every task's meta-loss starts near 1 whatever its loss's
units (ln 10 for a 10-class classifier, ln 259 for a byte-level LM), so no family dominates the meta-gradient by the
size of its loss alone; since the PES/ES estimates are linear in the per-step losses, this is exactly ĝ_j / c_j. c_j
depends only on (seed, task), never on θ, so a resumed run recomputes the same value. ``task_batch_sizes`` gives each
task its own batch size (default ``local_batch_size`` for all), e.g. the batch its family is meta-tested with.

Reproducibility: every random number is a pure function of (seed, step). The PRNG key of outer step s and task j is
``fold_in(fold_in(fold_in(PRNGKey(seed), 2), s), j)`` and the data of that step is ``dataset.batches(split,
(S, N, B), seed=data_seed(seed, j, s))``, so a resumed run, given the checkpointed state at step s, repeats exactly
what the uninterrupted run would have done. The data stream is prefetched to the device across steps by
``mulo.data.prefetch.DevicePrefetcher``.

Outputs in the run directory (the ``meta-train`` command, ``mulo.app.commands.meta_train``, names and claims it):

* ``metrics.jsonl`` (and wandb): per step ``meta_loss`` (mean over tasks of the raw meta-losses),
  ``meta_loss_family/<family>`` (mean over the family's tasks of meta_loss_j / c_j: the families on one scale when
  ``meta_loss_norm`` is ``init_loss``), ``loss_scale/<task>`` (c_j, with ``init_loss``), ``meta_loss/<task>``,
  ``delta_loss/<task>``, ``grad_norm/<task>``, ``inner_step/<task>``, ``train_loss/<task>``, ``meta_grad_norm``,
  ``lr``, ``nonfinite`` (1 if this step's meta-gradient was skipped), ``skipped_steps`` (running count),
  ``step_time_s``, ``inner_steps_per_s``;
* ``checkpoints/`` (see ``mulo.meta.checkpoint``) every ``save_iter`` steps, at the end and on SIGTERM/SIGINT;
* ``theta/theta_step<N>.msgpack``: θ only, with the LO's hyper-parameters (``mulo.optimizers.save_theta``), at every
  save; ``theta_final.msgpack``: θ at the end of the run (what meta-test and export load; not written when the run is
  interrupted).
"""

from __future__ import annotations

import functools
import itertools
import signal
import threading
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mulo.errors import CheckpointError, ConfigError
from mulo.io import MetricsLog, trim_metrics
from mulo.layout import THETA_EXT, THETA_FINAL, theta_final_path, theta_step_path  # noqa: F401 (the one layout)
from mulo.meta import outer
from mulo.meta.checkpoint import Checkpointer
from mulo.meta.mixture import divides_by_init_loss, init_loss_scale, task_batch_sizes, task_family
from mulo.meta.estimators import TruncatedEstimator
from mulo.registry import component
from mulo.meta.unroll import TruncatedUnroll
from mulo.data.transfer import device_decoder, host_kwargs, resident_images, wants_resident
from mulo.parallel import Placement, agree, is_main_process


class TrainState(NamedTuple):
    step: jax.Array  # int32: outer steps done
    theta: Any
    opt_state: Any
    estimators: tuple  # one PESState / ESState per task
    skipped: jax.Array  # int32: outer steps whose meta-gradient was non-finite (no update applied)


def data_seed(seed: int, task_index: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(task_index), int(step)]).generate_state(1)[0])


def _key(seed: int, *path: int) -> jax.Array:
    key = jax.random.PRNGKey(seed)
    for p in path:
        key = jax.random.fold_in(key, p)
    return key


class MetaTrainer:
    """Estimators, outer optimizer and the jitted outer update for ``tasks`` and ``lo`` under ``cfg``."""

    def __init__(self, cfg, tasks: Sequence[Any], lo: Any, placement: Placement | None = None):
        if cfg.trunc_length % cfg.steps_per_jit:
            raise ConfigError(f"steps_per_jit={cfg.steps_per_jit} must divide trunc_length={cfg.trunc_length}")
        self.cfg = cfg
        self.tasks = list(tasks)
        self.lo = lo
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate task in --task {','.join(names)}")
        self.placement = placement or Placement.from_config(cfg)
        self.batch_sizes = task_batch_sizes(cfg, len(self.tasks))
        for b in self.batch_sizes:
            self.placement.check(cfg.num_tasks, b)
        self.families = tuple(task_family(t) for t in self.tasks)
        trunc = component("truncation", cfg.truncation_schedule)
        schedule = trunc.build(trunc.hparams_of({"min_length": cfg.truncation_schedule_min_length,
                                                 "random_offset": cfg.random_initial_iteration_offset}),
                               cfg.num_inner_steps)
        spec = component("estimator", cfg.gradient_estimator)
        rule = spec.build(spec.hparams_of({"std": cfg.pes_std, "trunc_length": cfg.trunc_length,
                                           "num_pairs": cfg.num_tasks}))
        donate = jax.default_backend() != "cpu"
        self.estimators = [
            TruncatedEstimator(TruncatedUnroll(t, lo, schedule, cfg.num_tasks, cfg.meta_loss_split,
                                               use_bf16=cfg.use_bf16),
                               rule, steps_per_jit=cfg.steps_per_jit, donate=donate, placement=self.placement)
            for t in self.tasks]
        self.tx, self.lr_fn = outer.from_config(cfg)
        devices = list(self.placement.mesh.devices.flat)
        self.resident = tuple(wants_resident(cfg.data_on_device, t.dataset, devices, e.unroll.data_splits)
                              for t, e in zip(self.tasks, self.estimators))  # datasets kept on the devices
        rep = self.placement.replicated
        self._outer = jax.jit(self._outer_update, out_shardings=rep)

    @functools.cached_property
    def loss_scales(self) -> tuple[float, ...] | None:
        """c_j per task (``meta_loss_norm="init_loss"``), or None for the plain mean; computed on first use (not by a
        trainer built only for its ``identity``)."""
        if not divides_by_init_loss(self.cfg.meta_loss_norm):
            return None
        return tuple(init_loss_scale(t, self.cfg.seed, j, self.cfg.num_tasks, b, _key(self.cfg.seed, 3, j))
                     for j, (t, b) in enumerate(zip(self.tasks, self.batch_sizes)))

    # ---- state --------------------------------------------------------------------------------------------------

    def init_state(self) -> TrainState:
        seed = self.cfg.seed
        theta = self.lo.init_theta(_key(seed, 0))
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
        cfg = self.cfg
        hp = self.lo.hparams
        hp = asdict(hp) if is_dataclass(hp) else hp
        keys = ("task", "optimizer", "seed", "num_tasks", "gradient_estimator", "trunc_length", "steps_per_jit",
                "pes_std", "local_batch_size", "meta_loss_split", "truncation_schedule",
                "truncation_schedule_min_length", "num_inner_steps", "random_initial_iteration_offset")
        optional = {k: cfg[k] for k, default in (("meta_loss_norm", "none"), ("task_batch_sizes", None))
                    if cfg[k] != default}  # only when set, so that runs from before these keys still resume
        return {**{k: cfg[k] for k in keys}, **optional, "lo": getattr(self.lo, "name", type(self.lo).__name__),
                "lo_hparams": hp, "num_processes": jax.process_count()}

    # ---- data ---------------------------------------------------------------------------------------------------

    def chunk_shape(self, j: int = 0) -> tuple[int, int, int]:
        """(S, N, B) of task j's data chunks."""
        return (self.cfg.steps_per_jit, self.cfg.num_tasks, self.batch_sizes[j])

    def host_stream(self, j: int, start_step: int, part: tuple[slice, ...] | None = None) -> Iterator[dict]:
        """Chunks {split: {"x", "y"}} of shape (S, N, B, ...) for task j, from outer step ``start_step`` on; only
        the block ``part`` of each (this process's devices' share) when given."""
        cfg, est = self.cfg, self.estimators[j]
        splits = est.unroll.data_splits
        dataset = self.tasks[j].dataset
        for step in itertools.count(start_step):
            seed = data_seed(cfg.seed, j, step)
            kw = {} if part is None else {"part": part}  # the whole chunk: any dataset with batches(split, shape, seed)
            kw.update(host_kwargs(dataset, self.resident[j]))  # uint8 images or indices, decoded on the device
            its = {sp: dataset.batches(sp, self.chunk_shape(j), seed, **kw) for sp in splits}
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
            streams.append(DevicePrefetcher(self.host_stream(j, start_step, part), size=self.cfg.prefetch_batches,
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
            g, new, metrics = est.estimate(state.theta, est_state, _key(self.cfg.seed, 2, s, j), streams[j])
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


# ---------------------------------------------------------------------------------------------------------------------
# the loop


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint after the current step and exits cleanly. A second
    SIGINT interrupts at once."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _save_theta(path: Path, lo, theta, extra: dict) -> Path:
    from mulo.optimizers import save_theta

    path.parent.mkdir(parents=True, exist_ok=True)
    save_theta(path, lo, jax.device_get(theta), extra=extra)
    return path


def train(cfg, tasks: Sequence[Any], lo: Any, run_dir: str | Path, *, stop_after: int | None = None,
          on_step: Callable[[int, dict], None] | None = None, handle_signals: bool = True,
          placement: Placement | None = None, logger: Any = None) -> dict:
    """Meta-train in ``run_dir``; returns a summary dict (final step, θ file, whether it was interrupted).

    ``stop_after``: behave as if interrupted after that many outer steps (tests). ``on_step(step, metrics)`` is called
    after every step (the SIGTERM test uses it to signal readiness). ``placement``: the device mesh (default: every
    device, as the config's ``data_parallel`` says). ``logger``: where process 0 logs each step's metrics (an object
    with ``log(step, metrics)`` and ``close()``; default ``mulo.io.MetricsLog``: ``<run_dir>/metrics.jsonl``; the
    command line passes one that mirrors them to wandb too)."""
    run_dir = Path(run_dir)
    trainer = MetaTrainer(cfg, tasks, lo, placement)
    ckpt = Checkpointer(run_dir / "checkpoints", cfg.checkpoints_to_keep, trainer.identity())
    latest = ckpt.latest_step()
    if latest is not None:
        if not cfg.auto_resume:
            raise CheckpointError(f"{run_dir} already has meta-training checkpoints (latest step {latest}): pass "
                                  f"--auto_resume true to continue that run, or set another name_suffix or output_dir")
        ckpt.check_identity()
    main = is_main_process()  # process 0 writes metrics, wandb and θ files; every process checkpoints (orbax)
    state = trainer.init_state()
    if latest is not None:
        _, state = ckpt.restore(state)
        state = trainer.place(state)
        if main:
            trim_metrics(run_dir / "metrics.jsonl", int(state.step))
    start = int(state.step)
    hp = lo.hparams
    theta_extra = {"run_dir": str(run_dir), "tasks": list(cfg.task), "lo_hparams": asdict(hp) if is_dataclass(hp)
                   else hp}

    def save(step_state: TrainState) -> None:
        step = int(step_state.step)
        ckpt.save(step, step_state)
        if main:
            _save_theta(theta_step_path(run_dir, step), lo, step_state.theta, {**theta_extra, "step": step})

    interrupted = None
    streams = trainer.streams(start)
    logger = (logger if logger is not None else MetricsLog(run_dir)) if main else _NullLogger()
    bar = None
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.num_outer_steps, initial=start, disable=not (cfg.progress and main), desc="meta-train",
                   dynamic_ncols=True)
        inner_per_step = 2 * cfg.num_tasks * cfg.trunc_length * len(tasks)
        with (_StopFlag() if handle_signals else _NoSignals()) as flag:
            for s in range(start, cfg.num_outer_steps):
                t0 = time.perf_counter()
                state, metrics = trainer.step(state, streams)
                dt = time.perf_counter() - t0
                metrics.update(step_time_s=dt, inner_steps_per_s=inner_per_step / dt)
                if (s + 1) % cfg.log_every == 0 or s == start:
                    logger.log(s + 1, metrics)
                bar.update(1)
                bar.set_postfix(meta_loss=f"{metrics['meta_loss']:.4f}", skipped=metrics["skipped_steps"])
                if on_step is not None:
                    on_step(s + 1, metrics)
                stop = agree(flag.signal is not None) or (stop_after is not None and s + 1 >= stop_after)
                if (s + 1) % cfg.save_iter == 0 or stop or s + 1 == cfg.num_outer_steps:
                    save(state)
                if stop:
                    interrupted = (signal.Signals(flag.signal).name if flag.signal is not None
                                   else "stop_after" if stop_after is not None and s + 1 >= stop_after
                                   else "a signal to another process")
                    break
    finally:
        if bar is not None:
            bar.close()
        for it in streams:
            it.close()
        logger.close()
        ckpt.close()
    final = None
    if interrupted is None and main:
        final = _save_theta(theta_final_path(run_dir), lo, state.theta, {**theta_extra, "step": int(state.step)})
    return {"step": int(state.step), "theta_file": str(final) if final else None, "interrupted": interrupted,
            "run_dir": str(run_dir), "state": state}


class _NullLogger:
    """What processes other than 0 log to: nothing."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


class _NoSignals:
    signal = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
