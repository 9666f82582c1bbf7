"""Atomic file writes: write a temporary file in the same folder, fsync it, then rename it over the target.

A reader (or a crash) therefore sees either the old file or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """numpy / jax scalars and arrays -> Python numbers and lists."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json_line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_json_default, allow_nan=True) + "\n"


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one complete line with a single O_APPEND write, so concurrent or interrupted writers never leave a
    partial line inside the file (at worst a truncated last line, which ``read_jsonl`` skips)."""
    data = line.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # pragma: no cover - os.write on regular files writes everything
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike, bad: list[int] | None = None,
               numbers: list[int] | None = None) -> list[dict]:
    """Every complete JSON object line of a metrics file. An incomplete last line (a crash mid-write) is skipped;
    so is a damaged line anywhere (not JSON, not an object, not UTF-8), whose 1-based number is appended to ``bad``
    when given, so the caller can warn. ``numbers``, when given, gets the line number of each record returned."""
    out = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                line = raw.decode("utf-8").strip()
                record = json.loads(line) if line else None
            except ValueError:  # UnicodeDecodeError and JSONDecodeError
                record = False
            if record is None:
                continue
            if isinstance(record, dict):
                out.append(record)
                if numbers is not None:
                    numbers.append(number)
            elif bad is not None:
                bad.append(number)
    return out


def _clean(value: Any) -> Any:
    """jax/numpy scalars -> floats (non-finite ones as their string); keep None/str/bool/int."""
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else (str(value))


class MetricsLog:
    """Append metrics as JSON lines to ``<run_dir>/<filename>`` (one record per step: step, time, the metrics). The
    paper packages log to this; the command line's ``mulo.app.runlog.RunLogger`` mirrors the same records to wandb."""

    def __init__(self, run_dir: str | os.PathLike, filename: str = "metrics.jsonl"):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / filename

    def record(self, step: int, metrics: Mapping[str, Any]) -> dict:
        """Append one record; returns it."""
        record = {"step": int(step), "time": time.time(), **{k: _clean(v) for k, v in metrics.items()}}
        append_line(self.path, to_json_line(record))
        return record

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.record(step, metrics)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _is_step(step: Any) -> bool:
    return isinstance(step, int) and not isinstance(step, bool)


def trim_metrics(path: str | os.PathLike, last_step: int) -> None:
    """On resume: keep the records up to ``last_step`` (steps redone after a resume would otherwise appear twice).
    Damaged lines (not JSON, binary garbage) and records whose ``step`` is not an integer are dropped with one
    warning line naming the file and the lines; the run continues."""
    path = Path(path)
    if not path.is_file():
        return
    bad: list[int] = []
    numbers: list[int] = []
    records = read_jsonl(path, bad, numbers)
    bad += [n for n, r in zip(numbers, records) if not _is_step(r.get("step"))]
    if bad:
        bad.sort()
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        print(f"warning: {path}: dropped {len(bad)} damaged line(s) (line {shown}: not a JSON record with an integer "
              f"step); resuming", file=sys.stderr)
    kept = [r for r in records if _is_step(r.get("step")) and r["step"] <= last_step]
    atomic_write_text(path, "".join(to_json_line(r) for r in kept))


@contextmanager
def private_tempdir(prefix: str = "mulo-") -> Iterator[Path]:
    """Point ``tempfile`` at a fresh directory for the duration of the block and remove it afterwards, for library
    calls that leave temporary directories behind (TFDS's dataset-info download leaves an empty one per call)."""
    import shutil

    path = Path(tempfile.mkdtemp(prefix=prefix))
    old = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = old
        shutil.rmtree(path, ignore_errors=True)
