"""MuAdam, the ``optimizer`` section's ``muadam``: Adam whose final (lr-scaled) update is multiplied per tensor by the
task's μP update scales (reference §3)."""

from __future__ import annotations

from typing import Any

import optax

from mulo.optimizers.adam import AdamHParams
from mulo.optimizers.base import Optimizer
from mulo.optimizers.hand_designed import ScalarOrSchedule, from_optax, scale_by_tree
from mulo.registry import Component, register_hand_designed


def muadam_transform(learning_rate: ScalarOrSchedule, update_scales: Any, b1: float = 0.9, b2: float = 0.999,
                     eps: float = 1e-8) -> optax.GradientTransformation:
    return optax.chain(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), scale_by_tree(update_scales))


def muadam(learning_rate: ScalarOrSchedule, update_scales: Any, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8) -> Optimizer:
    return from_optax(muadam_transform(learning_rate, update_scales, b1=b1, b2=b2, eps=eps))


def build(hp: AdamHParams, task: Any, num_steps: int) -> Optimizer:
    return muadam(hp.schedule(num_steps), task.update_scales, b1=hp.b1, b2=hp.b2)


register_hand_designed(Component(name="muadam", hparams=AdamHParams, build=build,
                                 help="Adam times the task's μP update scales (μAdam)"))
