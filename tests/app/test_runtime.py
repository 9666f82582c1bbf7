"""The persistent compilation cache: the config key turns it on, a second process loads what the first compiled,
the environment variable wins, `none` turns it off, and an unusable directory is a warning, not a failure."""

import os
import subprocess
import sys

from tests.conftest import REPO

# Applies the runtime keys exactly as the CLI does, then compiles one function and prints how many compiled
# executables were loaded from the cache (JAX's own monitoring event). The minimum compile time is lowered so a tiny
# function is worth caching.
PROBE = """
import sys
import numpy as np
import jax, jax.numpy as jnp
from mulo.app import runtime
from mulo.app.config import load_config
cfg = load_config(None, cli={"compilation_cache_dir": None if sys.argv[1] == "-" else sys.argv[1]})
runtime.apply(cfg)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(np.arange(5.0, dtype=np.float32)).block_until_ready()
print("hits", len(hits))
"""


def _probe(cache_arg: str, env_dir: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "MULO_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = str(REPO / "src")
    if env_dir is not None:
        env["MULO_COMPILATION_CACHE_DIR"] = env_dir
    out = subprocess.run([sys.executable, "-c", PROBE, cache_arg], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("hits")][-1]
    return int(line.split()[1]), out.stderr


def _entries(path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_second_process_loads_the_compiled_function(tmp_path):
    cache = tmp_path / "cache"
    hits, err = _probe(str(cache))
    assert hits == 0 and "Warning" not in err, err  # nothing cached yet: compiled and stored
    stored = _entries(cache)
    assert stored, "the first process stored nothing"
    assert _probe(str(cache))[0] == 1  # loaded, not compiled
    assert _entries(cache) == stored


def test_environment_variable_wins_and_none_turns_it_off(tmp_path):
    from_cfg, from_env = tmp_path / "cfg", tmp_path / "env"
    _probe(str(from_cfg), env_dir=str(from_env))
    assert _entries(from_env) and not _entries(from_cfg)
    _probe(str(from_cfg), env_dir="none")
    assert not _entries(from_cfg)
    _probe("-")  # compilation_cache_dir = None in the config
    assert not _entries(from_cfg)


def test_unusable_directory_is_a_warning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    hits, err = _probe(str(blocker / "cache"))
    assert hits == 0
    assert "warning: compilation cache off" in err and err.count("\n") == 1
