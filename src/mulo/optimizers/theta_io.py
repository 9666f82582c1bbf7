"""θ files: a learned optimizer's meta-parameters *with* its name and hyper-parameters.

The reference stored θ alone, so meta-test had to be told ``hidden_size`` and ``adafac_step_mult`` again and could
silently use values other than those it was trained with (reference_design.md §9 item 9). Here every θ file carries
them, and ``load_theta`` rebuilds the exact LO.

Format (msgpack, via flax.serialization): a map with
  ``format``  = "mulo-theta",
  ``version`` = 1,
  ``header``  = JSON text {"lo_name": ..., "hparams": {...}, "extra": {...}},
  ``theta``   = the meta-parameter tree (nested maps of float32 arrays).
Files are written atomically (mulo.io), so a crash never leaves a half-written θ file behind.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from flax import serialization

from mulo.errors import CheckpointError, ConfigError
from mulo.io import atomic_write_bytes
from mulo.registry import learned_spec

FORMAT = "mulo-theta"
VERSION = 1


def learned_from_hparams(name: str, hparams: Any, impl: str = "fused") -> Any:
    """The registered learned optimizer ``name`` (``mulo.registry``) with the given hyper-parameters (a dict as
    stored in θ files, or the LO's own hyper-parameter object)."""
    return learned_spec(name).build(hparams, impl)


def save_theta(path: str | os.PathLike, lo: Any, theta: Any, extra: dict | None = None) -> None:
    """Write ``theta`` with ``lo``'s name and hyper-parameters (and JSON-able ``extra`` metadata) atomically."""
    header = {"lo_name": lo.name, "hparams": lo.hparams.to_dict(), "extra": extra or {}}
    tree = jax.tree.map(lambda x: np.asarray(jax.device_get(x), dtype=np.float32), theta)
    payload = {"format": FORMAT, "version": VERSION, "header": json.dumps(header, sort_keys=True, default=_json),
               "theta": tree}
    atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def _json(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"extra metadata must be JSON-serialisable, got {type(obj).__name__}")


def load_theta(path: str | os.PathLike, impl: str = "fused") -> tuple[Any, Any, dict]:
    """(lo, theta, extra) from a θ file written by ``save_theta``. Raises CheckpointError (one line) if the file is
    missing, corrupt, of an unknown format or version, or its θ does not match its hyper-parameters."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"theta file {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            payload = serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several unrelated types on corrupt input
        raise CheckpointError(f"theta file {path!r} is corrupt or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a mulo theta file (no '{FORMAT}' format tag)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"theta file {path!r} has format version {payload.get('version')!r}; this mulo reads "
                              f"version {VERSION}")
    try:
        header = json.loads(payload["header"])
        name, hparams = header["lo_name"], header["hparams"]
        extra = header.get("extra", {})
        theta = payload["theta"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"theta file {path!r} has a bad header ({type(e).__name__}: {e})") from None
    try:
        lo = learned_from_hparams(name, hparams, impl=impl)
    except ConfigError as e:
        if "config key 'lo_impl'" in str(e):  # the LO has no such implementation: its line says which it has
            raise ConfigError(f"{e} (theta file {path!r} holds {name})") from None
        raise CheckpointError(f"theta file {path!r} has a bad header ({type(e).__name__}: {e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"theta file {path!r} has a bad header ({type(e).__name__}: {e})") from None
    expected = jax.eval_shape(lo.init_theta, jax.random.PRNGKey(0))
    got_shapes = jax.tree.map(lambda x: tuple(np.shape(x)), theta)
    want_shapes = jax.tree.map(lambda x: tuple(x.shape), expected)
    if got_shapes != want_shapes:
        hp = lo.hparams.to_dict()
        shown = f"hidden_size={hp['hidden_size']}" if "hidden_size" in hp else f"hyper-parameters {hp}"
        raise CheckpointError(f"theta file {path!r}: its meta-parameters do not match {lo.name} with {shown}")
    theta = jax.tree.map(lambda x: np.asarray(x, np.float32), theta)
    return lo, theta, extra
