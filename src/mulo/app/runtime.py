"""Process-wide JAX settings taken from the config before any work starts.

The persistent compilation cache stores every compiled computation that took at least a second to compile, keyed by
its HLO, the compile options, the JAX/XLA version and the device, so a rerun, an ``--auto_resume``, the next seed of a
meta-test or the next trial of a sweep loads the compiled step instead of compiling it again (the fused learned
optimizer's step compiles for 15-20 s per task on a 2-core CPU). A stale entry cannot be picked up: a changed program
has another key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mulo.layout import CACHE_ROOT
from mulo.registry import MATMUL_PRECISIONS, WANDB_MODES

MIN_COMPILE_SECONDS = 1.0  # cheaper compilations are not worth a file
CACHE_ENV = "MULO_COMPILATION_CACHE_DIR"  # wins over the config key (tests point it at a temporary directory)
# Libraries that would write under the home directory (~/.keras, ~/.config/matplotlib, ~/.cache/wandb, ...) are
# pointed at CACHE_ROOT/<sub> when the variable is unset; a value the user set is kept.
LIBRARY_DIRS = {"KERAS_HOME": "keras", "MPLCONFIGDIR": "matplotlib", "WANDB_CACHE_DIR": "wandb/cache",
                "WANDB_CONFIG_DIR": "wandb/config", "WANDB_DATA_DIR": "wandb/data", "WANDB_DIR": "wandb/runs"}
# the WANDB_MODE variable: WANDB_MODES, or the older names wandb itself still accepts
WANDB_ENV_MODES = WANDB_MODES + ("dryrun", "run")


def library_dirs(environ: Any = None) -> dict[str, str]:
    """Set the unset LIBRARY_DIRS variables (before those libraries are imported); returns what was set. Runs write
    their wandb files into the run directory (``mulo.app.runlog``); WANDB_DIR only catches what a library writes
    outside a run."""
    environ = os.environ if environ is None else environ
    root = Path(CACHE_ROOT).expanduser()
    out = {}
    for var, sub in LIBRARY_DIRS.items():
        if not environ.get(var):
            environ[var] = out[var] = str(root / sub)
    return out


def check_environment(environ: Any = None) -> None:
    """Environment variables mulo reads must hold accepted values (one-line ConfigError)."""
    from mulo.errors import ConfigError

    environ = os.environ if environ is None else environ
    mode = environ.get("WANDB_MODE")
    if mode is not None and mode not in WANDB_ENV_MODES:
        raise ConfigError(f"bad value {mode!r} for environment variable WANDB_MODE: expected one of "
                          f"{', '.join(WANDB_MODES)}")


def enable_compilation_cache(cache_dir: str | None, max_gb: float) -> Path | None:
    """Point JAX's persistent compilation cache at ``cache_dir`` (``~`` expanded); None turns it off.

    The cache only makes things faster, so a directory that cannot be created is a one-line warning, not an error.
    Returns the directory in use, or None.
    """
    import jax

    if cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    path = Path(cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"warning: compilation cache off, cannot create {path}: {exc.strerror or exc}", file=sys.stderr)
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", int(max_gb * 2**30))
    return path


def set_matmul_precision(name: str) -> None:
    """Every float32 matmul at the precision the config states (config key jax_default_matmul_precision): exact
    float32, TF32 or one bf16 pass; never left to the backend's default (TF32 on NVIDIA GPUs)."""
    import jax

    if name not in MATMUL_PRECISIONS:
        from mulo.errors import ConfigError

        raise ConfigError(f"bad value {name!r} for config key 'jax_default_matmul_precision': expected one of "
                          f"{', '.join(MATMUL_PRECISIONS)}")
    jax.config.update("jax_default_matmul_precision", name)


def apply(cfg: Any) -> None:
    """Apply the config's runtime keys (called once by the CLI before dispatching)."""
    from mulo.app.config import parse_cli_value

    check_environment()

    cache_dir = cfg.compilation_cache_dir
    env = os.environ.get(CACHE_ENV)
    if env is not None:  # read like the command-line option ("none" turns it off); empty also means off
        cache_dir = parse_cli_value("compilation_cache_dir", env) if env.strip() else None
    enable_compilation_cache(cache_dir, cfg.compilation_cache_max_gb)
    set_matmul_precision(cfg.jax_default_matmul_precision)
    from mulo.parallel import initialize_distributed

    initialize_distributed(cfg)  # before anything touches a JAX backend
