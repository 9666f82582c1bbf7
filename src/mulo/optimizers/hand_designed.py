"""Hand-designed optimizers (SGD, Adam, AdamW, MuAdam) behind the common ``Optimizer`` interface.

All the math is optax's; this module only wraps an ``optax.GradientTransformation`` into
``Optimizer(init, update, params)`` with the params held in the state, and adds MuAdam's per-tensor μP scaling.
``learning_rate`` may be a float or an optax schedule (a function of the step count).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optax

from mulo.optimizers.base import Optimizer
from mulo.optimizers.mup_scale import scale_by_tree

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


def sgd(learning_rate: ScalarOrSchedule, momentum: float = 0.0) -> Optimizer:
    return from_optax(optax.sgd(learning_rate, momentum=momentum if momentum else None))


def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    return from_optax(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def adamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-4) -> Optimizer:
    return from_optax(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


def muadam_transform(learning_rate: ScalarOrSchedule, update_scales: Any, b1: float = 0.9, b2: float = 0.999,
                     eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam whose final (lr-scaled) update is multiplied per tensor by the μP ``update_scales`` (reference §3)."""
    return optax.chain(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), scale_by_tree(update_scales))


def muadam(learning_rate: ScalarOrSchedule, update_scales: Any, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8) -> Optimizer:
    return from_optax(muadam_transform(learning_rate, update_scales, b1=b1, b2=b2, eps=eps))


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
