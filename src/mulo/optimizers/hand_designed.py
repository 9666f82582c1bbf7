"""What the hand-designed optimizers (``sgd``, ``adam``, ``adamw``, ``muadam``: one module each, registered in the
``optimizer`` section) share: the wrapper of an ``optax.GradientTransformation`` into ``Optimizer(init, update,
params)`` with the params held in the state, the per-tensor scaling MuAdam chains after Adam, and the learning-rate
schedule with its hyper-parameters (``ScheduleHParams``, the base of every hand-designed optimizer's dataclass).

All the math is optax's. ``learning_rate`` may be a float or an optax schedule (a function of the step count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import optax

from mulo.hparams import POSITIVE, hparam
from mulo.optimizers.base import Optimizer

ScalarOrSchedule = Any  # float | optax.Schedule


class HandDesignedState(NamedTuple):
    params: Any
    opt_state: Any


def from_optax(tx: optax.GradientTransformation) -> Optimizer:
    """Wrap any optax transformation (its update gets the params, so weight decay works) as an ``Optimizer``."""

    def init(params, num_steps: int | None = None) -> HandDesignedState:
        del num_steps
        return HandDesignedState(params=params, opt_state=tx.init(params))

    def update(state: HandDesignedState, grads, loss=None, key=None) -> HandDesignedState:
        del loss, key
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return HandDesignedState(params=optax.apply_updates(state.params, updates), opt_state=opt_state)

    def params(state: HandDesignedState):
        return state.params

    return Optimizer(init=init, update=update, params=params)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiply each update tensor by the matching scalar of ``scales`` (a pytree shaped like the params)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(init_fn, update_fn)


def lr_schedule(learning_rate: float, warmup_steps: int = 0, cosine_decay: bool = False, end_lr_ratio: float = 0.1,
                num_steps: int = 1000) -> ScalarOrSchedule:
    """The learning rate of hand-designed optimizers: constant, or linear warmup from 0 over ``warmup_steps`` and/or
    cosine decay to ``end_lr_ratio * learning_rate`` at step ``num_steps`` (which includes the warmup), then
    constant. Returns a plain float when there is no schedule."""
    if not warmup_steps and not cosine_decay:
        return learning_rate
    if cosine_decay:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
            decay_steps=max(num_steps, warmup_steps + 1), end_value=end_lr_ratio * learning_rate)
    return optax.linear_schedule(init_value=0.0, end_value=learning_rate, transition_steps=warmup_steps)


@dataclass(frozen=True)
class ScheduleHParams:
    """The learning rate and its schedule: the keys every hand-designed optimizer's section has."""

    learning_rate: float = hparam(1e-3, "learning rate (the peak of the schedule)", min=POSITIVE)
    warmup_steps: int = hparam(0, "linear warmup steps from 0", min=0)
    cosine_decay: bool = hparam(False, "cosine-decay the learning rate to end_lr_ratio * lr over num_inner_steps")
    end_lr_ratio: float = hparam(0.1, "final lr / peak lr of the cosine schedule", min=0.0)

    def schedule(self, num_steps: int) -> ScalarOrSchedule:
        return lr_schedule(self.learning_rate, warmup_steps=self.warmup_steps, cosine_decay=self.cosine_decay,
                           end_lr_ratio=self.end_lr_ratio, num_steps=num_steps)
