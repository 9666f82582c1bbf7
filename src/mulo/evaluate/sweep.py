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
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from mulo.config import SCHEMA, Config
from mulo.errors import ConfigError, MuloError
from mulo.evaluate.lo_source import _jsonable
from mulo.evaluate.meta_test import build_tasks
from mulo.evaluate.train_loop import LoopSettings, TrainLoop, final_loss_text, run_summary
from mulo.io import atomic_write_json, atomic_write_text
from mulo.registry import HAND_DESIGNED

METHODS = ("grid", "tpe", "random")
HEARTBEAT_S = 30
GRACE_S = 180
MAX_RETRY = 3


class TrialFailed(Exception):
    """A trial raised an unexpected error: it is recorded as failed and the sweep goes on."""


# ---------------------------------------------------------------------------------------------------------------------
# the search space


def parse_sweep_config(cfg: Config) -> tuple[str, dict[str, Any]]:
    """(method, parameters) from ``cfg.sweep_config``, checked: every parameter a config key, every value valid."""
    sc = dict(cfg.sweep_config or {})
    if not sc:
        raise ConfigError("sweep_config is empty: set sweep_config = dict(method=..., parameters=dict(...)) in the "
                          "sweep's config file (see config/sweeps/sweep_muadam.py)")
    unknown = set(sc) - {"method", "parameters", "metric"}
    if unknown:
        raise ConfigError(f"unknown sweep_config entries {sorted(unknown)}: expected method, parameters")
    method = sc.get("method", "grid")
    if method not in METHODS:
        raise ConfigError(f"bad sweep_config.method {method!r}: expected one of {', '.join(METHODS)}")
    params = sc.get("parameters") or {}
    if not isinstance(params, Mapping) or not params:
        raise ConfigError("sweep_config.parameters is empty: expected dict(key=[values]) or dict(key=dict(low=, "
                          "high=, log=))")
    space: dict[str, Any] = {}
    for key, spec in params.items():
        if key not in SCHEMA:
            raise ConfigError(f"sweep_config.parameters: {key!r} is not a config key")
        if key in ("task", "optimizer", "seed", "sweep_config", "storage", "study_name", "output_dir"):
            raise ConfigError(f"sweep_config.parameters: {key!r} cannot be swept")
        if isinstance(spec, (list, tuple)):
            values = list(spec)
            if not values:
                raise ConfigError(f"sweep_config.parameters.{key}: empty list of values")
            for v in values:
                cfg.replace(**{key: v})  # validates the value
            space[key] = values
        elif isinstance(spec, Mapping):
            if method == "grid":
                raise ConfigError(f"sweep_config.parameters.{key}: a grid sweep needs a list of values, not a range")
            if SCHEMA[key].type not in ("float", "int") or not {"low", "high"} <= set(spec):
                raise ConfigError(f"sweep_config.parameters.{key}: a range needs low and high for a numeric key")
            low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
            if not low < high or (log and low <= 0):
                raise ConfigError(f"sweep_config.parameters.{key}: need low < high (and low > 0 with log=True)")
            cfg.replace(**{key: low}), cfg.replace(**{key: high})
            space[key] = {"low": low, "high": high, "log": log, "type": SCHEMA[key].type}
        else:
            raise ConfigError(f"sweep_config.parameters.{key}: expected a list of values or dict(low=, high=)")
    return method, space


def grid_size(space: Mapping[str, Any]) -> int:
    return math.prod(len(v) for v in space.values())


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            out[key] = trial.suggest_categorical(key, spec)
        elif spec["type"] == "int":
            out[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=spec["log"])
        else:
            out[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=spec["log"])
    return out


def make_sampler(method: str, space: Mapping[str, Any], seed: int):
    import optuna

    if method == "grid":
        return optuna.samplers.GridSampler({k: list(v) for k, v in space.items()}, seed=seed)
    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


# ---------------------------------------------------------------------------------------------------------------------
# storage and resumption


def storage_url(cfg: Config, run_dir: Path) -> str:
    return cfg.storage or f"sqlite:///{(run_dir / 'study.db').resolve()}"


_PASSWORD = re.compile(r"://[^:/@]*:([^/]*)@")  # scheme://user:PASSWORD@host (up to the last @ before the path)


def masked(url: str, text: str | None = None) -> str:
    """``text`` (default: the URL itself) with the URL's password replaced by ``***``: a storage URL may hold a
    database password, which is never stored in a file nor printed."""
    text = url if text is None else text
    m = _PASSWORD.search(url)
    return text.replace(m.group(1), "***") if m and m.group(1) else text


def check_storage(url: str | None) -> None:
    """A ``--storage`` URL must parse and name an installed database driver, a SQLite file must be creatable, and
    the database must answer; checked at once, before anything is created (a malformed URL used to be retried for
    ~9 s, an unreadable database left the run directory claimed for its study). Errors show the URL masked."""
    if url is None:
        return
    from sqlalchemy.engine import make_url

    shown = masked(url)
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except ImportError as exc:
        raise ConfigError(f"cannot open Optuna storage {shown!r}: missing database driver "
                          f"({masked(url, str(exc))})") from None
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's ArgumentError, NoSuchModuleError, ValueError ...
        msg = masked(url, " ".join(str(exc).split()))[:200]
        raise ConfigError(f"bad value {shown!r} for config key 'storage': expected a database URL such as "
                          f"sqlite:////path/study.db or postgresql://user@host/db ({type(exc).__name__}: {msg})"
                          ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        from mulo.rundir import check_writable

        check_writable(Path(parsed.database).expanduser().parent, "the storage's SQLite folder")
        if not Path(parsed.database).expanduser().exists():
            return  # a new SQLite file: nothing to read yet (creating it is the sweep's first write)
    _check_reachable(url)


def _check_reachable(url: str) -> None:
    """Connect once and read the table list (no retries): an unreachable server or a file that is not a database
    is one ConfigError line."""
    import sqlalchemy

    engine = None
    try:
        engine = sqlalchemy.create_engine(url)
        sqlalchemy.inspect(engine).get_table_names()
    except Exception as exc:  # noqa: BLE001 - OperationalError, DatabaseError, ...
        msg = masked(url, " ".join(str(exc).split()))[:200]
        raise ConfigError(f"cannot open Optuna storage {masked(url)!r}: {type(exc).__name__}: {msg}") from None
    finally:
        if engine is not None:
            engine.dispose()


def open_study(url: str, study_name: str, sampler: Any, attempts: int = 5):
    """Create or load the study (several workers may race to create it)."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    last: Exception | None = None
    for i in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRY))
            return optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                       direction="minimize", load_if_exists=True)
        except ImportError as exc:
            raise ConfigError(f"cannot open Optuna storage {masked(url)!r}: missing database driver "
                              f"({masked(url, str(exc))})") from None
        except Exception as exc:  # races between workers creating tables, a bad URL, an unreachable server
            if type(exc).__name__ in ("ArgumentError", "NoSuchModuleError"):  # malformed: retrying cannot help
                last = exc
                break
            last = exc
            time.sleep(0.5 * (i + 1))
    msg = masked(url, " ".join(str(last).split()))[:200]
    raise ConfigError(f"cannot open Optuna storage {masked(url)!r}: {type(last).__name__}: {msg}")


STUDY_KEYS = ("optimizer", "task", "num_inner_steps", "local_batch_size", "seed", "sweep_objective_frac",
              "sweep_config")


def check_study_settings(study: Any, cfg: Config) -> None:
    """Record the settings every trial of the study must share on its first use; refuse to join a study made with
    other settings (its objectives would not be comparable)."""
    mine = _jsonable({k: cfg[k] for k in STUDY_KEYS})
    theirs = study.user_attrs.get("settings")
    if theirs is None:
        study.set_user_attr("settings", mine)
        return
    diff = [k for k in STUDY_KEYS if theirs.get(k) != mine.get(k)]
    if diff:
        raise ConfigError(f"study {study.study_name!r} was made with other settings ({', '.join(diff)}: "
                          f"{', '.join(repr(theirs.get(k)) for k in diff)}): use the same config or another "
                          f"--study_name")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retried_numbers(trials) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])} | \
           {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}


def requeue_dead_trials(study: Any) -> list[int]:
    """Fail the RUNNING trials of processes on this machine that no longer exist, and re-queue them; re-queue the
    trials an aborted worker left (user error, interrupt). Returns the re-queued trial numbers."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    out = []
    for t in trials:
        attrs = t.user_attrs
        dead = (t.state == TrialState.RUNNING and attrs.get("host") == host and "pid" in attrs
                and not _pid_alive(int(attrs["pid"])))
        aborted = t.state == TrialState.FAIL and bool(attrs.get("aborted")) and t.number not in retried
        if dead:
            try:
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        if dead or aborted:
            retry(study, study._storage.get_trial(t._trial_id))
            out.append(t.number)
    return out


class _Budget:
    """Stop once ``budget`` trials have finished (retries of dead or aborted trials not counted twice)."""

    def __init__(self, budget: int | None):
        self.budget = budget

    def done(self, study: Any) -> bool:
        from optuna.trial import TrialState

        if self.budget is None:
            return False
        trials = study.get_trials(deepcopy=False)
        retried = _retried_numbers(trials)
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
                    and t.number not in retried]
        return len(finished) >= self.budget

    def __call__(self, study: Any, trial: Any) -> None:
        if self.done(study):
            study.stop()


# ---------------------------------------------------------------------------------------------------------------------
# one trial


def run_trial(cfg: Config, params: Mapping[str, Any], trial_dir: Path, group: str, name: str) -> dict:
    """Train the sweep's task once with ``params`` applied to the config; return the trial's summary."""
    from mulo.optimizers import build_optimizer
    from mulo.runlog import RunLogger

    tcfg = cfg.replace(**dict(params))
    task = build_tasks(tcfg)[0]
    loop = TrainLoop(task, build_optimizer(tcfg, task), LoopSettings.from_config(tcfg))
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
    keys = {"optimizer": cfg.optimizer, "task": list(cfg.task), "num_inner_steps": cfg.num_inner_steps,
            "local_batch_size": cfg.local_batch_size, **dict(best_params)}
    for key, v in keys.items():
        lines.append(f"{key} = {v!r}")
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
    if cfg.optimizer not in HAND_DESIGNED:
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
    from mulo.rundir import claim

    import optuna
    from optuna.trial import TrialState

    run_dir = Path(run_dir)
    method, space = check_sweep(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    budget = _Budget(cfg.sweep_trials)
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
            msg = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
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


STUDY_RECORD = "study.json"
SETUP_WAIT_S = 60  # workers started together take turns at the run directory's lock while they set up


def claim_study(run_dir: Path, url: str, name: str) -> None:
    """A sweep's run directory belongs to one study: record it on first use (``study.json``); a sweep of another
    study (other storage or name) aimed at the same directory stops. Workers of the same study share it."""
    import json

    from mulo.rundir import OutputError

    url = masked(url)  # no database password in the record nor in the error
    mine = {"storage": url, "study_name": name}
    path = run_dir / STUDY_RECORD
    if path.is_file():
        try:
            theirs = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            theirs = None
        if isinstance(theirs, dict) and {k: theirs.get(k) for k in mine} != mine:
            raise ConfigError(f"run directory {run_dir} holds the sweep study {theirs.get('study_name')!r} in "
                              f"{theirs.get('storage')!r}, not {name!r} in {url!r}: use the same --storage and "
                              f"--study_name to join it, or another name_suffix or output_dir")
        if isinstance(theirs, dict):
            return
    try:
        atomic_write_json(path, mine)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def main(cfg: Config, args: Any = None) -> int:
    """``sweep`` command handler. Everything that needs no file is checked first (sweep config, task name, storage
    URL, run name and output_dir, data, memory of a trial); nothing is created when a check fails."""
    from mulo import preflight, startup
    from mulo.optimizers import build_optimizer
    from mulo.rundir import claim, run_dir_path, run_name, write_config

    run_dir = run_dir_path(cfg, "sweep")
    _, space = check_sweep(cfg)
    tasks = build_tasks(cfg)
    preflight.check_data(tasks, ["train"] + ([] if cfg.skip_test else ["test"]))
    batch = space.get("local_batch_size", cfg.local_batch_size)  # the largest batch a trial may use
    batch = max(batch) if isinstance(batch, list) else int(batch["high"]) if isinstance(batch, dict) else batch
    preflight.check_loops(cfg, tasks, lambda t: build_optimizer(cfg, t), "a sweep trial", batch_size=batch)
    name = cfg.study_name or run_name(cfg, "sweep")
    with claim(run_dir, "sweep setup", wait=SETUP_WAIT_S):
        claim_study(run_dir, storage_url(cfg, run_dir), name)
    base = getattr(args, "config", None)
    shown = cfg.replace(storage=masked(cfg.storage)) if cfg.storage else cfg  # config.py holds no password
    startup.announce("sweep", cfg, run_dir, runs_under="trials/trial<k>")
    run_sweep(cfg, run_dir, base_config=base, study_name=name, on_ready=lambda: write_config(run_dir, shown))
    return 0
