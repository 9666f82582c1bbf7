"""Run directories: ``<output_dir>/<run_name>/`` with the resolved config, metrics.jsonl, checkpoints and plots.

A command that writes a run directory holds its lock (``claim``) for as long as it writes there: a second process
aimed at the same directory stops at once with one line naming the holder (pid, host, command, start time), so two
runs never interleave their files and no run is moved aside while its owner still writes it. The lock is an OS file
lock (``filelock``), released by the kernel when its process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mulo.app.config import Config, dump_text
from mulo.errors import MuloError
from mulo.io import atomic_write_json, atomic_write_text
from mulo.registry import LEARNED_OPTIMIZERS

LOCK_FILE = ".mulo.lock"
OWNER_FILE = ".mulo.owner.json"  # who holds the lock (the lock file itself is truncated by each contender)
NAME_MAX = 255  # bytes in one path component on Linux/macOS file systems


class RunDirBusy(MuloError):
    """Another live process holds the run directory."""


class OutputError(MuloError):
    """An output location cannot be created or written."""

_WIDTH = re.compile(r"-w(\d+)-")


def tasks_label(tasks: list[str]) -> str:
    """One readable label for the task list: the task itself, or the family with its widths joined by '+'
    (``mumlp-w32+64+128-d3_fashionmnist-28x28x1``), or the first task and a count."""
    if len(tasks) == 1:
        return tasks[0]
    widths = [_WIDTH.search(t) for t in tasks]
    families = {_WIDTH.sub("-w*-", t, count=1) for t in tasks}
    if all(widths) and len(families) == 1:
        joined = "+".join(m.group(1) for m in widths)
        return _WIDTH.sub(f"-w{joined}-", tasks[0], count=1)
    return f"{tasks[0]}+{len(tasks) - 1}more"


def theta_label(path: str | os.PathLike) -> str:
    """``theta-<first 8 hex digits of the θ file's SHA-256>``: the same θ gives the same label wherever it lies,
    another θ (another run, another step) another one."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"theta-{digest.hexdigest()[:8]}"


def run_name(cfg: Config, kind: str, theta: str | None = None) -> str:
    """``{kind}_{optimizer}[hidden][_what]_{tasks}{suffix}``, where ``what`` tells runs of one optimizer apart:

    * a hand-designed optimizer's learning rate, ``lr0.01`` (not for sweeps, which vary it);
    * a learned optimizer's θ (``theta``, see ``theta_label``) when the user gave no ``name_suffix`` of their own.

    E.g. ``meta-train_mup_small_fc_mlp32_mumlp-w128-d3_...``, ``meta-test_muadam_lr0.1_mumlp-w64-d3_...``."""
    spec = LEARNED_OPTIMIZERS.get(cfg.optimizer)  # None: hand-designed
    opt = cfg.optimizer + (str(cfg[spec.label_key]) if spec is not None and spec.label_key else "")
    if spec is None and kind != "sweep":
        opt += f"_lr{cfg.learning_rate:g}"
    elif spec is not None and theta and not cfg.name_suffix:
        opt += f"_{theta}"
    name = f"{kind}_{opt}_{tasks_label(list(cfg.task))}{cfg.name_suffix}"
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", name)


def run_dir_path(cfg: Config, kind: str, theta: str | None = None) -> Path:
    """``<output_dir>/<run_name>``, checked (name length, output_dir usable) but not created."""
    name = run_name(cfg, kind, theta)
    if len(name.encode("utf-8")) > NAME_MAX:
        raise OutputError(f"run name is {len(name.encode('utf-8'))} bytes, longer than the file system's "
                          f"{NAME_MAX}: shorten name_suffix ({len(cfg.name_suffix)} characters) or the task list")
    check_writable(cfg.output_dir, "output_dir")
    return Path(cfg.output_dir) / name


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_writable(folder: str | os.PathLike, what: str = "output directory", min_free_mb: float = 1.0) -> None:
    """``folder`` is, or can be created as, a writable directory on a file system with some free space; else
    OutputError (one line). Writes nothing."""
    path = Path(folder).expanduser()
    probe = path
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.is_symlink() and not probe.exists():
        raise OutputError(f"{what} {path}: {probe} is a broken symbolic link")
    if not probe.is_dir():
        where = "is not a directory" if probe == path else f"cannot be created: {probe} is not a directory"
        raise OutputError(f"{what} {path} {where}")
    try:
        st = os.statvfs(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot inspect {probe}: {_os_reason(exc)}") from None
    if st.f_flag & os.ST_RDONLY:
        raise OutputError(f"{what} {path} is on a read-only file system ({probe})")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} is not writable: permission denied on {probe}")
    free_mb = st.f_bavail * st.f_frsize / 2**20
    if free_mb < min_free_mb:
        raise OutputError(f"{what} {path}: no space left on its file system ({free_mb:.1f} MiB free)")


def create_dir(path: str | os.PathLike, what: str = "run directory") -> bool:
    """mkdir -p ``path``; True when it did not exist before. One-line OutputError on failure."""
    path = Path(path)
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {path}: {_os_reason(exc)}") from None
    return not existed


def _holder(path: Path, patience_s: float = 2.0) -> str:
    """Who holds the lock, from its owner record (written just after the lock is taken: wait a moment for it)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            info = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
            return f"{info['command']} (pid {info['pid']} on {info['host']}, since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return "another process"
            time.sleep(0.05)


@contextmanager
def claim(path: str | os.PathLike, command: str, wait: float = 0) -> Iterator[Path]:
    """Hold the lock of run directory ``path`` (created if needed) while the block runs.

    Held elsewhere (for more than ``wait`` seconds): RunDirBusy naming the holder. If the block fails before it wrote anything but the lock, a
    directory this call created is removed again, so a refused or failed start leaves nothing behind."""
    from filelock import FileLock, Timeout

    path = Path(path)
    created = create_dir(path)
    lock = FileLock(str(path / LOCK_FILE), timeout=wait)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirBusy(f"run directory {path} is in use by {_holder(path)}: wait for it to finish, or choose "
                         f"another name_suffix or output_dir") from None
    except OSError as exc:
        _remove_if_unused(path, created)
        raise OutputError(f"cannot lock run directory {path}: {_os_reason(exc)}") from None
    try:
        try:
            atomic_write_json(path / OWNER_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                                  "command": command, "since": time.time()})
        except OSError as exc:
            raise OutputError(f"cannot write in run directory {path}: {_os_reason(exc)}") from None
        yield path
    except BaseException:
        _remove_if_unused(path, created)
        raise
    finally:
        try:
            (path / OWNER_FILE).unlink()
        except OSError:
            pass
        lock.release()


def _remove_if_unused(path: Path, created: bool) -> None:
    """Remove a run directory this process created when it holds nothing but the lock files."""
    if not created:
        return
    try:
        if {p.name for p in path.iterdir()} <= {LOCK_FILE, OWNER_FILE}:
            shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def write_config(path: str | os.PathLike, cfg: Config) -> Path:
    """The resolved config as ``<run dir>/config.py`` (atomically); written only once a run starts or continues."""
    try:
        return atomic_write_text(Path(path) / "config.py", dump_text(cfg))
    except OSError as exc:
        raise OutputError(f"cannot write {Path(path) / 'config.py'}: {_os_reason(exc)}") from None


def make_run_dir(cfg: Config, kind: str, theta: str | None = None) -> Path:
    """Create (or reuse) the run directory and write the resolved config into it atomically (no lock: commands
    use ``run_dir_path`` + ``claim`` + ``write_config``)."""
    path = run_dir_path(cfg, kind, theta)
    create_dir(path)
    write_config(path, cfg)
    return path

