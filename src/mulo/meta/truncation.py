"""Truncation schedules: how long each meta-training inner problem (episode) runs before it is reset.

* ``constant``: every episode lasts ``max_length`` (= ``num_inner_steps``) steps.
* ``log_uniform``: at every (re)start the length is drawn log-uniformly from the integers in
  [``min_length``, ``max_length``]: L = floor(exp(U(ln min, ln(max + 1)))), so P(L <= q) = ln((q + 1)/min) /
  ln((max + 1)/min). (The reference draws from [min, max) and so can never reach ``num_inner_steps``.)

At initialisation every inner problem also starts at a random inner step in [0, ``initial_offset``), so that the
``num_tasks`` problems of an estimator do not all reset in the same window (reference §4.2).

Everything here is a pure function of a PRNG key, so the ± branches of a PES pair (which share keys) draw the same
lengths and reset together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from mulo.errors import ConfigError
from mulo.registry import TRUNCATION_KINDS


@dataclass(frozen=True)
class TruncationSchedule:
    kind: str
    min_length: int
    max_length: int
    initial_offset: int = 0

    def __post_init__(self):
        if self.kind not in TRUNCATION_KINDS:
            raise ConfigError(f"bad truncation_schedule {self.kind!r}: expected one of {', '.join(TRUNCATION_KINDS)}")
        if self.max_length < 1:
            raise ConfigError(f"bad num_inner_steps {self.max_length}: expected >= 1")
        if self.kind == "log_uniform" and not 1 <= self.min_length <= self.max_length:
            raise ConfigError(f"bad truncation_schedule_min_length {self.min_length}: expected 1 <= it <= "
                              f"num_inner_steps={self.max_length}")
        if self.initial_offset < 0:
            raise ConfigError(f"bad random_initial_iteration_offset {self.initial_offset}: expected >= 0")

    @classmethod
    def from_config(cls, cfg) -> "TruncationSchedule":
        return cls(kind=cfg.truncation_schedule, min_length=cfg.truncation_schedule_min_length,
                   max_length=cfg.num_inner_steps, initial_offset=cfg.random_initial_iteration_offset)

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
