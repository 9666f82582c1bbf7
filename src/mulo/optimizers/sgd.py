"""SGD (with optional heavy-ball momentum), the ``optimizer`` section's ``sgd``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optax

from mulo.hparams import hparam
from mulo.optimizers.base import Optimizer
from mulo.optimizers.hand_designed import ScalarOrSchedule, ScheduleHParams, from_optax
from mulo.registry import Component, register_hand_designed


@dataclass(frozen=True)
class SGDHParams(ScheduleHParams):
    momentum: float = hparam(0.0, "momentum (0: plain SGD)", min=0.0, max=1.0, below_max=True)


def sgd(learning_rate: ScalarOrSchedule, momentum: float = 0.0) -> Optimizer:
    return from_optax(optax.sgd(learning_rate, momentum=momentum if momentum else None))


def build(hp: SGDHParams, task: Any, num_steps: int) -> Optimizer:
    del task
    return sgd(hp.schedule(num_steps), momentum=hp.momentum)


register_hand_designed(Component(name="sgd", hparams=SGDHParams, build=build, help="SGD with optional momentum"))
