"""Adam, the ``optimizer`` section's ``adam``; ``AdamHParams`` is also AdamW's and MuAdam's base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optax

from mulo.hparams import hparam
from mulo.optimizers.base import Optimizer
from mulo.optimizers.hand_designed import ScalarOrSchedule, ScheduleHParams, from_optax
from mulo.registry import Component, register_hand_designed


@dataclass(frozen=True)
class AdamHParams(ScheduleHParams):
    b1: float = hparam(0.9, "Adam beta1", min=0.0, max=1.0, below_max=True)
    b2: float = hparam(0.999, "Adam beta2", min=0.0, max=1.0, below_max=True)


def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    return from_optax(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def build(hp: AdamHParams, task: Any, num_steps: int) -> Optimizer:
    del task
    return adam(hp.schedule(num_steps), b1=hp.b1, b2=hp.b2)


register_hand_designed(Component(name="adam", hparams=AdamHParams, build=build, help="Adam"))
