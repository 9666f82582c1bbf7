"""The outer loop of PES/ES meta-training (``python src/main.py meta-train``: ``mulo.app.commands.meta_train``).

    state = trainer.init_state()                       # θ, outer optimizer, one estimator state per task
    for step in range(start, num_outer_steps):
        for each task j: ĝ_j, state_j = estimator_j.estimate(θ, state_j, key(step, j), data_j)
        θ ← AdamW(θ, mean_j ĝ_j / c_j)                  # skipped (and counted) if ĝ has a NaN/inf

**Mixing task families** (``mulo.meta.outer.combine_meta_gradients``). Task j's meta-loss is divided by a scale c_j
that ``meta_loss_norm`` picks: ``none`` (c_j = 1, the paper's plain mean) or ``init_loss`` (c_j = the task's
meta-loss at initialisation: the mean normalised loss of ``num_pairs`` freshly initialised optimizees on one batch,
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

import signal
import threading
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax

from mulo.errors import CheckpointError
from mulo.io import trim_metrics
from mulo.layout import theta_final_path, theta_step_path
from mulo.meta.checkpoint import Checkpointer
from mulo.meta.settings import TrainSettings
from mulo.meta.trainer import MetaTrainer, TrainState
from mulo.parallel import Placement, agree, is_main_process


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


def train(settings: TrainSettings, tasks: Sequence[Any], lo: Any, estimator: Any, truncation: Any,
          run_dir: str | Path, *, make_logger: Callable[[], Any] | None = None, stop_after: int | None = None,
          on_step: Callable[[int, dict], None] | None = None, handle_signals: bool = True,
          placement: Placement | None = None, init_theta: Any = None) -> dict:
    """Meta-train ``lo`` on ``tasks`` with ``estimator`` (its ``num_pairs`` inner problems per task) and
    ``truncation`` in ``run_dir``; returns a summary dict (final step, θ file, whether it was interrupted).

    ``make_logger()``: the metrics logger (``log(step, metrics)``, ``close()``), made on process 0 once a resumed
    run's metrics are trimmed (None: metrics are not logged). ``stop_after``: behave as if interrupted after that many
    outer steps (tests). ``on_step(step, metrics)`` is called after every step (the SIGTERM test uses it to signal
    readiness). ``placement``: the device mesh (default: every device, as ``settings.data_parallel`` says).
    ``init_theta``: θ to start from instead of ``lo.init_theta`` (a warm start; a resume continues its checkpoint)."""
    run_dir = Path(run_dir)
    trainer = MetaTrainer(settings, tasks, lo, estimator, truncation, placement, init_theta)
    ckpt = Checkpointer(run_dir / "checkpoints", settings.checkpoints_to_keep, trainer.identity())
    latest = ckpt.latest_step()
    if latest is not None:
        if not settings.auto_resume:
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
    theta_extra = {"run_dir": str(run_dir), "tasks": list(settings.task), "lo_hparams": asdict(hp)
                   if is_dataclass(hp) else hp}

    def save(step_state: TrainState) -> None:
        step = int(step_state.step)
        ckpt.save(step, step_state)
        if main:
            _save_theta(theta_step_path(run_dir, step), lo, step_state.theta, {**theta_extra, "step": step})

    interrupted = None
    streams = trainer.streams(start)
    logger = make_logger() if main and make_logger is not None else _NullLogger()
    bar = None
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.num_outer_steps, initial=start, disable=not (settings.progress and main),
                   desc="meta-train", dynamic_ncols=True)
        inner_per_step = 2 * trainer.num_pairs * estimator.hparams.trunc_length * len(tasks)
        with (_StopFlag() if handle_signals else _NoSignals()) as flag:
            for s in range(start, settings.num_outer_steps):
                t0 = time.perf_counter()
                state, metrics = trainer.step(state, streams)
                dt = time.perf_counter() - t0
                metrics.update(step_time_s=dt, inner_steps_per_s=inner_per_step / dt)
                if (s + 1) % settings.log_every == 0 or s == start:
                    logger.log(s + 1, metrics)
                bar.update(1)
                bar.set_postfix(meta_loss=f"{metrics['meta_loss']:.4f}", skipped=metrics["skipped_steps"])
                if on_step is not None:
                    on_step(s + 1, metrics)
                stop = agree(flag.signal is not None) or (stop_after is not None and s + 1 >= stop_after)
                if (s + 1) % settings.save_iter == 0 or stop or s + 1 == settings.num_outer_steps:
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


def check_resume(settings: TrainSettings, trainer_identity: dict, run_dir: Path) -> None:
    """Existing checkpoints in ``run_dir`` are continued only with auto_resume and a matching identity
    (``MetaTrainer.identity()``): checked before config.py is written (train() checks it too, but a refused rerun
    must not rewrite the run's config)."""
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        return
    ckpt = Checkpointer(ckpt_dir, settings.checkpoints_to_keep, trainer_identity)
    try:
        latest = ckpt.latest_step()
        if latest is None:
            return
        if not settings.auto_resume:
            raise CheckpointError(f"{run_dir} already has meta-training checkpoints (latest step {latest}): pass "
                                  f"--auto_resume true to continue that run, or set another name_suffix or output_dir")
        ckpt.check_identity()
    finally:
        ckpt.close()
