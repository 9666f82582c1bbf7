"""Truncated ES (antithetic, the reference's "TruncatedES"): every masked step of a window is attributed to this
window's perturbation only, so the estimate is truncation-biased. Both branches restart every window from the same
state, the + branch's (there is no unperturbed trajectory to continue), so ES keeps no accumulator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mulo.meta.estimators import EstimatorHParams, scale_rows, window_terms
from mulo.meta.unroll import InnerState, StepOutput
from mulo.registry import Component, register_estimator


class ESState(NamedTuple):
    inner: InnerState  # leading axes (2, N); both branches equal at the start of every window


def es_pair_gradients(eps, meta_loss, mask, reset, std):
    """Per-pair truncated-ES estimates (leading axis N): every masked step is attributed to this window's ε only."""
    l_old, l_new, _ = window_terms(meta_loss, mask, reset)
    return scale_rows((l_old + l_new) / (2.0 * std ** 2), eps)


@dataclass(frozen=True)
class ES:
    hparams: EstimatorHParams = EstimatorHParams()
    name: str = "es"

    def state(self, inner: InnerState, carry: Any) -> ESState:
        del carry
        return ESState(inner)

    def init_carry(self, theta: Any) -> None:
        return None

    def carry_of(self, state: ESState) -> None:
        return None

    def state_sharding(self, placement: Any) -> ESState:
        return ESState(placement.branches)

    def pair_gradients(self, eps: Any, carry: Any, inner: InnerState, out: StepOutput):
        del carry
        grads = es_pair_gradients(eps, out.meta_loss, out.mask, out.reset, self.hparams.std)
        return grads, ESState(jax.tree.map(lambda x: jnp.stack([x[0], x[0]]), inner))


register_estimator(Component(name="es", hparams=EstimatorHParams, build=ES,
                             help="truncated ES: each window's steps attributed to its own perturbation (biased)"))
