"""One optimizer interface for hand-designed and learned optimizers (as small as optax's).

    opt = ...                      # an Optimizer
    state = opt.init(params, num_steps)
    loss, grads = jax.value_and_grad(task.loss)(opt.params(state), batch, key)
    state = opt.update(state, grads, loss, key)

The params live inside the state. Learned optimizers add one level: ``lo.init_theta(key) -> theta`` and
``lo.opt_fn(theta, update_scales) -> Optimizer``; ``theta`` may be a traced (vmapped, perturbed) pytree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import jax

from mulo.errors import ConfigError

State = Any
Params = Any


@dataclass(frozen=True)
class Optimizer:
    init: Callable[[Params, int], State]  # (params, num_steps) -> state
    update: Callable[[State, Params, jax.Array, jax.Array], State]  # (state, grads, loss, key) -> state
    params: Callable[[State], Params]  # state -> params


class LearnedOptimizer(Protocol):
    name: str
    hparams: Any  # frozen dataclass of the LO's hyper-parameters (hidden_size, step_mult, exp_mult, ...)

    def init_theta(self, key: jax.Array) -> Any: ...

    def opt_fn(self, theta: Any, update_scales: Any) -> Optimizer: ...


def check_variant(what: str, name: str, names: Sequence[str], impl: str, impls: Sequence[str],
                  impls_text: str | None = None) -> None:
    """One line for a learned optimizer built with a ``name`` its family does not have (``what``: e.g. "learned
    optimizer") or an implementation ``impl`` it lacks (``impls_text``: how to say which it has)."""
    if name not in names:
        raise ConfigError(f"unknown {what} {name!r}; expected one of {', '.join(names)}")
    if impl not in impls:
        raise ConfigError(f"bad value {impl!r} for config key 'lo_impl': "
                          f"{impls_text or 'expected one of ' + ', '.join(impls)}")
