"""AdamW (decoupled weight decay), the ``optimizer`` section's ``adamw``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optax

from mulo.hparams import hparam
from mulo.optimizers.adam import AdamHParams
from mulo.optimizers.base import Optimizer
from mulo.optimizers.hand_designed import ScalarOrSchedule, from_optax
from mulo.registry import Component, register_hand_designed


@dataclass(frozen=True)
class AdamWHParams(AdamHParams):
    weight_decay: float = hparam(1e-4, "AdamW weight decay", min=0.0)


def adamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-4) -> Optimizer:
    return from_optax(optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))


def build(hp: AdamWHParams, task: Any, num_steps: int) -> Optimizer:
    del task
    return adamw(hp.schedule(num_steps), b1=hp.b1, b2=hp.b2, weight_decay=hp.weight_decay)


register_hand_designed(Component(name="adamw", hparams=AdamWHParams, build=build, help="AdamW"))
