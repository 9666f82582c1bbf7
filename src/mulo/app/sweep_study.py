"""A sweep's Optuna study (``mulo.app.commands.sweep``): its storage URL (checked, password masked), opening or joining
the study, the settings its trials share, the run directory's record of its study, re-queuing the trials of dead
workers, and the trial budget."""

from __future__ import annotations

import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from mulo.app.config import Config
from mulo.errors import ConfigError, one_line
from mulo.evaluate.lo_source import _jsonable
from mulo.io import atomic_write_json

HEARTBEAT_S = 30
GRACE_S = 180
MAX_RETRY = 3
STUDY_RECORD = "study.json"


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
        msg = one_line(masked(url, str(exc)), 200)
        raise ConfigError(f"bad value {shown!r} for config key 'storage': expected a database URL such as "
                          f"sqlite:////path/study.db or postgresql://user@host/db ({type(exc).__name__}: {msg})"
                          ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        from mulo.app.rundir import check_writable

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
        msg = one_line(masked(url, str(exc)), 200)
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
    msg = one_line(masked(url, str(last)), 200)
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


class TrialBudget:
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


def claim_study(run_dir: Path, url: str, name: str) -> None:
    """A sweep's run directory belongs to one study: record it on first use (``study.json``); a sweep of another
    study (other storage or name) aimed at the same directory stops. Workers of the same study share it."""
    import json

    from mulo.app.rundir import OutputError

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
