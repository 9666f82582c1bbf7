"""Hyper-parameter sweeps of hand-designed optimizers (MuAdam, Adam, AdamW, SGD) with Optuna.

    python src/main.py sweep --config config/sweeps/sweep_muadam.py [--storage postgresql://...] [--study_name S]

The config's ``sweep_config`` says what to search::

    sweep_config = dict(method="grid",                      # grid | tpe | random
                        parameters=dict(learning_rate=[0.1, 0.01],          # grid: lists of values
                                        mup_input_mult=dict(low=1/16, high=16, log=True)))  # tpe/random: ranges

Every parameter is a config key; a trial is one training run (the meta-test training loop, one seed: ``seed``) of
``num_inner_steps`` steps on the (single) ``task``. The objective, minimised, is the mean train loss over the last
``sweep_objective_frac`` of the steps (not one noisy last minibatch, §9.21); a diverged trial scores inf and is marked
``diverged``. Trials that raise are recorded as failed.

The study lives in ``storage`` (default: SQLite ``<run_dir>/study.db``); several processes or machines given the same
storage URL and study name share it. A restarted sweep continues the study: finished trials are not repeated, and a
trial whose process died (same machine: its pid is gone; elsewhere: no heartbeat for a few minutes) is re-queued.

Outputs in the run directory: ``trials/trial<k>/metrics.jsonl`` + ``summary.json`` per trial (and wandb, grouped by
study), ``trials.json`` (every trial), ``best.json`` and ``best_config.py`` (``_base_`` = the sweep config plus the
best values: ready for ``meta-test --config``).

The search space is read in ``sweep_space``, the study (storage, shared settings, re-queuing) kept in ``sweep_study``;
this module runs the trials and writes the results.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Mapping

from mulo.app.config import SCHEMA, Config
from mulo.app.sections import build
from mulo.errors import ConfigError, MuloError, one_line
from mulo.evaluate.lo_source import _jsonable
from mulo.app.commands.meta_test import build_tasks
from mulo.app.sweep_space import grid_size, make_sampler, parse_sweep_config, suggest
from mulo.app.sweep_study import (TrialBudget, check_storage, check_study_settings, claim_study, masked,
                                       open_study, requeue_dead_trials, storage_url)
from mulo.evaluate.train_loop import LoopSettings, TrainLoop, final_loss_text, run_summary
from mulo.io import atomic_write_json, atomic_write_text
from mulo.registry import HAND_DESIGNED

SETUP_WAIT_S = 60  # workers started together take turns at the run directory's lock while they set up


class TrialFailed(Exception):
    """A trial raised an unexpected error: it is recorded as failed and the sweep goes on."""


# ---------------------------------------------------------------------------------------------------------------------
# one trial


def run_trial(cfg: Config, params: Mapping[str, Any], trial_dir: Path, group: str, name: str) -> dict:
    """Train the sweep's task once with ``params`` applied to the config; return the trial's summary."""
    from mulo.app.runlog import RunLogger

    tcfg = cfg.replace(**dict(params))
    task = build_tasks(tcfg)[0]
    loop = TrainLoop(task, build(tcfg, "optimizer", task, tcfg.num_inner_steps), LoopSettings.from_config(tcfg))
    logger = RunLogger(trial_dir, tcfg, group=group, name=name, job_type="sweep",
                       extra_config={"sweep_params": dict(params)})
    try:
        result = loop.run(cfg.seed, logger.log, desc=name)
    finally:
        logger.close()
    objective = result.tail_mean(cfg.sweep_objective_frac)
    summary = {**run_summary(result, cfg.sweep_objective_frac), "params": dict(params), "objective": objective,
               "objective_def": final_loss_text(cfg.sweep_objective_frac)}
    atomic_write_json(trial_dir / "summary.json", _jsonable(summary))
    return summary


# ---------------------------------------------------------------------------------------------------------------------
# results


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else repr(v)


def best_config_text(cfg: Config, best_params: Mapping[str, Any], value: float, trial_number: int,
                     base_config: str | None, run_dir: Path) -> str:
    lines = [f"# Best trial {trial_number} of the sweep in {run_dir.name}: objective {value:.6g}",
             f"# (mean train loss over the last {cfg.sweep_objective_frac:g} of {cfg.num_inner_steps} steps).",
             "# Use it as: python src/main.py meta-test --config <this file> [--task ...]"]
    if base_config:
        rel = os.path.relpath(Path(base_config).resolve(), run_dir.resolve())
        lines.append(f"_base_ = [{rel!r}]")
    lines.append("")
    best = cfg.replace(**dict(best_params))
    keys = {"task": list(cfg.task), "num_inner_steps": cfg.num_inner_steps, "local_batch_size": cfg.local_batch_size,
            **{k: best[k] for k in best_params if k in SCHEMA}}
    lines += [f"{key} = {v!r}" for key, v in keys.items()]
    # the section replaces the base config's optimizer whole: a base may still name it the flat way (a string)
    lines.append(f"optimizer = dict(_delete_=True, **{best.section('optimizer')!r})")
    return "\n".join(lines) + "\n"


def write_results(study: Any, cfg: Config, run_dir: Path, base_config: str | None) -> dict | None:
    """trials.json, best.json and best_config.py; returns the best trial as a dict (None if none finished)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
             "diverged": t.user_attrs.get("diverged"), "error": t.user_attrs.get("error"),
             "host": t.user_attrs.get("host")} for t in trials]
    atomic_write_json(run_dir / "trials.json", _jsonable(rows))
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    n_div = sum(bool(t.user_attrs.get("diverged")) for t in trials)
    n_fail = sum(t.state == TrialState.FAIL for t in trials)
    print(f"[sweep] {len(trials)} trials: {len(done)} finished, {n_div} diverged, {n_fail} failed")
    if not done:
        print("[sweep] no trial finished with a finite objective; no best configuration")
        return None
    best = min(done, key=lambda t: t.value)
    for t in sorted(done, key=lambda t: t.value)[:10]:
        print(f"[sweep]   trial {t.number:4d}  objective {t.value:.5g}  " +
              " ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()))
    info = {"trial": best.number, "objective": best.value, "params": best.params, "study": study.study_name}
    atomic_write_json(run_dir / "best.json", _jsonable(info))
    path = run_dir / "best_config.py"
    atomic_write_text(path, best_config_text(cfg, best.params, best.value, best.number, base_config, run_dir))
    print(f"[sweep] best: trial {best.number}, objective {best.value:.5g}: " +
          ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items()))
    print(f"[sweep] best configuration written to {path}")
    return info


# ---------------------------------------------------------------------------------------------------------------------
# the command


def check_sweep(cfg: Config) -> tuple[str, dict[str, Any]]:
    """(method, space) after every check that needs no file: optimizer, one task (its name), the search space, the
    trial budget, the storage URL."""
    if cfg.section("optimizer")["name"] not in HAND_DESIGNED:
        raise ConfigError(f"sweeps tune hand-designed optimizers ({', '.join(HAND_DESIGNED)}), not "
                          f"{cfg.optimizer!r}")
    if len(cfg.task) != 1:
        raise ConfigError(f"a sweep trains one task, got {len(cfg.task)}: {','.join(cfg.task)}")
    method, space = parse_sweep_config(cfg)
    build_tasks(cfg)  # validates the task name before any trial
    if method != "grid" and cfg.sweep_trials is None:
        raise ConfigError(f"a {method} sweep needs a trial budget: set sweep_trials")
    check_storage(cfg.storage)
    return method, space


def run_sweep(cfg: Config, run_dir: str | os.PathLike, base_config: str | None = None,
              study_name: str | None = None, max_trials_here: int | None = None,
              on_ready: Any = None) -> dict | None:
    """Run (or join, or resume) the sweep; return the best trial (dict) once this worker stops.

    ``max_trials_here`` limits the trials this call runs (tests use it to stop a worker early); ``on_ready()`` is
    called once the study is open and its settings match, before the first trial (the CLI writes config.py then).
    Each trial's directory is locked while the trial writes it."""
    from mulo.app.rundir import claim

    import optuna
    from optuna.trial import TrialState

    run_dir = Path(run_dir)
    method, space = check_sweep(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    budget = TrialBudget(cfg.sweep_trials)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial outcomes are printed by us; no tracebacks
    name = study_name or cfg.study_name or run_dir.name
    url = storage_url(cfg, run_dir)
    sampler = make_sampler(method, space, cfg.seed)
    study = open_study(url, name, sampler)
    check_study_settings(study, cfg)
    if on_ready is not None:
        on_ready()
    requeued = requeue_dead_trials(study)
    if requeued:
        print(f"[sweep] re-queued trials {requeued} whose worker stopped before finishing them")
    size = grid_size(space) if method == "grid" else None
    print(f"[sweep] study {name!r} ({method}, {size or cfg.sweep_trials} trials) in {masked(url)}")

    def waiting() -> bool:
        return any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))

    def finished_all() -> bool:
        if budget.done(study):
            return True
        if method != "grid" or waiting():
            return False
        # every grid point finished or being run by a live worker: starting another trial would duplicate one
        # (a dead worker's trial is re-queued when a sweep is started again)
        taken = {t.system_attrs.get("grid_id") for t in study.get_trials(deepcopy=False)
                 if t.state.is_finished() or t.state == TrialState.RUNNING}
        return not set(range(size)) - taken

    host, pid = socket.gethostname(), os.getpid()

    def objective(trial) -> float:
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", pid)
        for attr in ("aborted", "error", "diverged"):  # a re-queued trial carries its predecessor's attributes
            trial.set_user_attr(attr, None)
        params = suggest(trial, space)
        trial_name = f"trial{trial.number:04d}"
        print(f"[sweep] {trial_name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
        try:
            with claim(run_dir / "trials" / trial_name, f"sweep {trial_name}") as trial_dir:
                summary = run_trial(cfg, params, trial_dir, group=name, name=trial_name)
        except (MuloError, KeyboardInterrupt) as exc:
            trial.set_user_attr("aborted", True)
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:  # a bug or a numerical failure in this trial: record it, go on with the next
            msg = f"{type(exc).__name__}: {one_line(exc)}"
            trial.set_user_attr("error", msg)
            print(f"[sweep] {trial_name}: FAILED ({msg})")
            raise TrialFailed(msg) from exc
        trial.set_user_attr("diverged", bool(summary["diverged"]))
        trial.set_user_attr("final_train_loss", summary["final_train_loss"])
        if summary.get("test_loss") is not None:
            trial.set_user_attr("test_loss", summary["test_loss"])
        value = summary["objective"]
        print(f"[sweep] {trial_name}: objective {value:.5g}" + (" (diverged)" if summary["diverged"] else ""))
        return value

    # One trial at a time per local device: with several devices, one worker thread each (its trials run on its
    # device); several processes or machines share the study through --storage.
    import threading

    from mulo.parallel import local_device_pool, on_each_device

    lock, started = threading.Lock(), [0]

    def take() -> bool:
        with lock:
            if finished_all() or (max_trials_here is not None and started[0] >= max_trials_here):
                return False
            started[0] += 1
            return True

    def work(device=None, failed=lambda: False):
        while not failed() and take():
            study.optimize(objective, n_trials=1, callbacks=[budget], catch=(TrialFailed,))

    devices = local_device_pool()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(devices) > 1:
            on_each_device(devices, work)
        else:
            work()
    return write_results(study, cfg, run_dir, base_config)



def main(cfg: Config, args: Any = None) -> int:
    """``sweep`` command handler. Everything that needs no file is checked first (sweep config, task name, storage
    URL, run name and output_dir, data, memory of a trial); nothing is created when a check fails."""
    from mulo.app import preflight, startup
    from mulo.app.rundir import claim, run_dir_path, run_name, write_config

    run_dir = run_dir_path(cfg, "sweep")
    _, space = check_sweep(cfg)
    tasks = build_tasks(cfg)
    preflight.check_data(tasks, ["train"] + ([] if cfg.skip_test else ["test"]))
    batch = space.get("local_batch_size", cfg.local_batch_size)  # the largest batch a trial may use
    batch = max(batch) if isinstance(batch, list) else int(batch["high"]) if isinstance(batch, dict) else batch
    preflight.check_loops(cfg, tasks, lambda t: build(cfg, "optimizer", t, cfg.num_inner_steps), "a sweep trial", batch_size=batch)
    name = cfg.study_name or run_name(cfg, "sweep")
    with claim(run_dir, "sweep setup", wait=SETUP_WAIT_S):
        claim_study(run_dir, storage_url(cfg, run_dir), name)
    base = getattr(args, "config", None)
    shown = cfg.replace(storage=masked(cfg.storage)) if cfg.storage else cfg  # config.py holds no password
    startup.announce("sweep", cfg, run_dir, runs_under="trials/trial<k>")
    run_sweep(cfg, run_dir, base_config=base, study_name=name, on_ready=lambda: write_config(run_dir, shown))
    return 0
