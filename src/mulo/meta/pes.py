"""Truncated PES (persistent evolution strategies, reference §4.4): every window's per-pair estimate weighs the
steps of the episode running before the window by all the perturbations that episode has seen (the accumulator A),
so the estimate is unbiased over whole episodes. The notation and the attribution of an episode's final step are in
``mulo.meta.estimators``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mulo.meta.estimators import EstimatorHParams, scale_rows, window_terms
from mulo.meta.unroll import InnerState, StepOutput
from mulo.registry import Component, register_estimator


class PESState(NamedTuple):
    inner: InnerState  # leading axes (2, N)
    accum: Any  # θ-shaped, leading axis N: perturbations of the current episode from earlier windows


def pes_pair_gradients(eps, accum, meta_loss, mask, reset, std):
    """Per-pair PES estimates (leading axis N) and the new accumulator. ``accum`` excludes this window's ε."""
    l_old, l_new, _ = window_terms(meta_loss, mask, reset)
    total = jax.tree.map(jnp.add, accum, eps)
    inv = 1.0 / (2.0 * std ** 2)
    grads = jax.tree.map(lambda a, b: (a + b) * inv, scale_rows(l_old, total), scale_rows(l_new, eps))
    was_reset = jnp.any(reset > 0, axis=0)
    new_accum = jax.tree.map(
        lambda e, t: jnp.where(jnp.reshape(was_reset, was_reset.shape + (1,) * (e.ndim - 1)), e, t), eps, total)
    return grads, new_accum


@dataclass(frozen=True)
class PES:
    hparams: EstimatorHParams = EstimatorHParams()
    name: str = "pes"

    def state(self, inner: InnerState, carry: Any) -> PESState:
        return PESState(inner, carry)

    def init_carry(self, theta: Any) -> Any:
        n = self.hparams.num_pairs
        return jax.tree.map(lambda t: jnp.zeros((n,) + jnp.shape(t), jnp.result_type(t)), theta)

    def carry_of(self, state: PESState) -> Any:
        return state.accum

    def state_sharding(self, placement: Any) -> PESState:
        return PESState(placement.branches, placement.per_pair)

    def pair_gradients(self, eps: Any, carry: Any, inner: InnerState, out: StepOutput):
        grads, accum = pes_pair_gradients(eps, carry, out.meta_loss, out.mask, out.reset, self.hparams.std)
        return grads, PESState(inner, accum)


register_estimator(Component(name="pes", hparams=EstimatorHParams, build=PES,
                             help="truncated PES: unbiased over whole episodes (the paper's estimator)"))
