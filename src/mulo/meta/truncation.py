"""Truncation schedules: how long each meta-training inner problem (episode) runs before it is reset.

* ``constant``: every episode lasts ``max_length`` (= ``num_inner_steps``) steps.
* ``log_uniform``: at every (re)start the length is drawn log-uniformly from the integers in
  [``min_length``, ``max_length``]: L = floor(exp(U(ln min, ln(max + 1)))), so P(L <= q) = ln((q + 1)/min) /
  ln((max + 1)/min). (The reference draws from [min, max) and so can never reach ``num_inner_steps``.)

At initialisation every inner problem also starts at a random inner step in [0, ``initial_offset``), so that the
``num_pairs`` inner problems of an estimator do not all reset in the same window (reference §4.2).

Everything here is a pure function of a PRNG key, so the ± branches of a PES pair (which share keys) draw the same
lengths and reset together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mulo.errors import ConfigError
from mulo.hparams import hparam
from mulo.registry import Component, register_truncation

KINDS = ("constant", "log_uniform")  # the kinds TruncationSchedule draws (registered below)


@dataclass(frozen=True)
class TruncationHParams:
    """The ``truncation`` section (both kinds; ``min_length`` is read by log_uniform only)."""

    min_length: int = hparam(100, "shortest episode of the log-uniform schedule", min=1)
    random_offset: int = hparam(50, "initial inner steps drawn in [0, this) to desynchronise the inner problems",
                                min=0)


@dataclass(frozen=True)
class TruncationSchedule:
    kind: str
    min_length: int
    max_length: int
    initial_offset: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"bad truncation.name {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.max_length < 1:
            raise ConfigError(f"bad num_inner_steps {self.max_length}: expected >= 1")
        if self.kind == "log_uniform" and not 1 <= self.min_length <= self.max_length:
            raise ConfigError(f"bad truncation.min_length {self.min_length}: expected 1 <= it <= "
                              f"num_inner_steps={self.max_length}")
        if self.initial_offset < 0:
            raise ConfigError(f"bad truncation.random_offset {self.initial_offset}: expected >= 0")

    def sample_length(self, key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
        """Episode lengths (int32) of the given shape."""
        if self.kind == "constant":
            return jnp.full(shape, self.max_length, jnp.int32)
        lo, hi = math.log(self.min_length), math.log(self.max_length + 1)
        u = jax.random.uniform(key, shape, jnp.float32, lo, hi)
        length = jnp.floor(jnp.exp(u)).astype(jnp.int32)
        return jnp.clip(length, self.min_length, self.max_length)

    def sample_offset(self, key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
        """Initial inner steps (int32) in [0, initial_offset); zeros when the offset is 0."""
        if self.initial_offset <= 0:
            return jnp.zeros(shape, jnp.int32)
        return jax.random.randint(key, shape, 0, self.initial_offset, jnp.int32)


def _register(kind: str, help: str) -> None:
    def build(hparams: TruncationHParams, max_length: int) -> TruncationSchedule:
        return TruncationSchedule(kind=kind, min_length=hparams.min_length, max_length=max_length,
                                  initial_offset=hparams.random_offset)

    register_truncation(Component(name=kind, hparams=TruncationHParams, build=build, help=help))


_register("constant", "every episode lasts num_inner_steps")
_register("log_uniform", "episode lengths drawn log-uniformly from [min_length, num_inner_steps]")
