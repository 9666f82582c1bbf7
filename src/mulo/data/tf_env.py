"""TensorFlow for the input pipelines only: imported quietly, and never on the accelerator.

mulo uses TensorFlow for tf.data / TFDS / seqio input pipelines, never for compute. Two things go wrong by default:

* on a GPU machine TensorFlow grabs GPU memory as soon as it initialises its devices, and JAX then runs out of it:
  ``import_tf`` hides every GPU from TensorFlow (``tf.config.set_visible_devices([], "GPU")``) before it can
  initialise them, so tf.data runs on the CPU and the GPUs stay JAX's;
* importing it prints C++ log lines (oneDNN, CUDA stubs, absl's "All log messages before absl::InitializeLog()")
  on the process's stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says: the imports here capture file descriptor 2 while
  they run and pass on only lines that are not such log lines.

Use ``tf = import_tf()``, ``tfds = import_tfds()``, ``seqio = import_seqio()`` instead of importing them directly.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

# absl / TensorFlow C++ log lines: "I0000 00:00:1796162881.029142   12087 port.cc:153] ..." (levels I, W, E), and the
# warning absl prints before its first line
_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_NOISE = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",)


def is_noise(line: str) -> bool:
    """Whether a stderr line is TensorFlow's / absl's start-up logging (dropped while importing)."""
    return bool(_LOG_LINE.match(line)) or line.strip() in _NOISE


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes too) for the block; afterwards re-emit the lines that are not
    start-up log lines (``is_noise``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines() if not is_noise(line)]
            for line in kept:
                print(line, file=sys.stderr)


def _import(name: str) -> Any:
    if name in sys.modules:
        return sys.modules[name]
    with quiet_stderr():
        return importlib.import_module(name)


def hide_gpus(tf: Any) -> None:
    """Keep TensorFlow off the GPUs (a no-op once TensorFlow has initialised its devices, or without GPUs)."""
    try:
        if tf.config.get_visible_devices("GPU"):
            tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # devices already initialised (by code outside mulo): leave them
        pass


def import_tf() -> Any:
    """``tensorflow``, imported quietly, with its GPUs hidden."""
    tf = _import("tensorflow")
    hide_gpus(tf)
    return tf


def import_tfds() -> Any:
    """``tensorflow_datasets`` (after ``import_tf``)."""
    import_tf()
    return _import("tensorflow_datasets")


def import_seqio() -> Any:
    """``seqio`` (after ``import_tf``; seqio imports tensorflow_text, which logs too)."""
    import_tf()
    return _import("seqio")
