"""Meta-gradient estimators over truncated unrolls: truncated PES and truncated ES (antithetic).

Notation (reference §4.4): θ the LO meta-parameters, N = ``num_tasks`` antithetic pairs, σ = ``pes_std``,
K = ``trunc_length`` (a window), S = ``steps_per_jit``. One ``estimate`` call:

1. draws ε_i ~ N(0, σ² I), i = 1..N, and sets θ_i^± = θ ± ε_i;
2. unrolls every slot K steps with θ_i^+ and θ_i^- (K/S jitted chunks, both branches in one call, same data and keys);
3. with Δ_{i,t} = ℓ⁺_{i,t} − ℓ⁻_{i,t}, masks m_{i,t}, D_i = Σ_t m_{i,t} and h_{i,t} = 1[slot i was reset at or
   before step t of the window]:
       L_old,i = Σ_t Δ_{i,t} (1 − h_{i,t}) m_{i,t} / D_i      (steps of the episode that was running before the window)
       L_new,i = Σ_t Δ_{i,t} h_{i,t} m_{i,t} / D_i            (steps of episodes that started inside the window)
   **PES**: A_i ← A_i + ε_i (A_i: the perturbations the current episode has seen in earlier windows), then
       ĝ = (1/N) Σ_i (L_old,i A_i + L_new,i ε_i) / (2σ²),
   and A_i ← ε_i if slot i was reset inside the window (the new episode has only seen ε_i), else A_i is kept.
   **ES**: no accumulation: ĝ = (1/N) Σ_i (L_old,i + L_new,i) ε_i / (2σ²) (truncation-biased, the reference's
   "TruncatedES"). Both branches restart every window from the same state, the + branch's (there is no unperturbed
   trajectory to continue), so ES keeps no accumulator.

**Attribution of an episode's final step (a deliberate fix of reference §9.11).** h is raised by the *reset* step,
not by the step that finishes the episode. The final training step of an episode (the one that makes
``inner_step == length``) is still a step of the old episode: its loss depends on every perturbation that episode has
seen, so it belongs to the L_old·A term. The reset step that follows emits mask 0, and everything after it is in the
L_new·ε term. The reference raises h already at the final step (its ``has_finished`` cumsum includes the done flag),
which drops the earlier windows' perturbations from that one loss. ``tests/test_meta_pes.py`` checks the estimate
against the exact gradient of the unrolled objective with an episode that ends inside a window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mulo.meta.unroll import InnerState, StepOutput, TruncatedUnroll
from mulo.registry import ESTIMATORS



class PESState(NamedTuple):
    inner: InnerState  # leading axes (2, N)
    accum: Any  # θ-shaped, leading axis N: perturbations of the current episode from earlier windows


class ESState(NamedTuple):
    inner: InnerState  # leading axes (2, N); both branches equal at the start of every window


def sample_perturbations(theta: Any, key: jax.Array, num: int, std: float) -> Any:
    """ε with leading axis ``num``: one independent normal draw per leaf, scaled by ``std``."""
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    eps = [std * jax.random.normal(k, (num,) + jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, eps)


def antithetic(theta: Any, eps: Any) -> Any:
    """θ ± ε with leading axes (2, N)."""
    return jax.tree.map(lambda t, e: jnp.stack([t + e, t - e]), theta, eps)


def window_terms(meta_loss: jax.Array, mask: jax.Array, reset: jax.Array):
    """(L_old, L_new, D) per slot from a window's outputs: meta_loss (K, 2, N), mask and reset (K, N)."""
    delta = (meta_loss[:, 0] - meta_loss[:, 1]) * mask
    h = (jnp.cumsum(reset, axis=0) > 0).astype(delta.dtype)  # raised at the reset step (see the module docstring)
    denom = jnp.maximum(jnp.sum(mask, axis=0), 1.0)
    return jnp.sum(delta * (1.0 - h), axis=0) / denom, jnp.sum(delta * h, axis=0) / denom, denom


def _scale_rows(weights: jax.Array, tree: Any) -> Any:
    return jax.tree.map(lambda x: x * jnp.reshape(weights, weights.shape + (1,) * (x.ndim - 1)), tree)


def pes_pair_gradients(eps, accum, meta_loss, mask, reset, std):
    """Per-pair PES estimates (leading axis N) and the new accumulator. ``accum`` excludes this window's ε."""
    l_old, l_new, _ = window_terms(meta_loss, mask, reset)
    total = jax.tree.map(jnp.add, accum, eps)
    inv = 1.0 / (2.0 * std ** 2)
    grads = jax.tree.map(lambda a, b: (a + b) * inv, _scale_rows(l_old, total), _scale_rows(l_new, eps))
    was_reset = jnp.any(reset > 0, axis=0)
    new_accum = jax.tree.map(
        lambda e, t: jnp.where(jnp.reshape(was_reset, was_reset.shape + (1,) * (e.ndim - 1)), e, t), eps, total)
    return grads, new_accum


def es_pair_gradients(eps, meta_loss, mask, reset, std):
    """Per-pair truncated-ES estimates (leading axis N): every masked step is attributed to this window's ε only."""
    l_old, l_new, _ = window_terms(meta_loss, mask, reset)
    return _scale_rows((l_old + l_new) / (2.0 * std ** 2), eps)


def _concat_outputs(outs: tuple[StepOutput, ...]) -> StepOutput:
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)


@dataclass(frozen=True)
class TruncatedEstimator:
    """Truncated PES or ES for one task. ``estimate`` pulls K/S batches of shape (S, N, B, ...) from ``batches``."""

    unroll: TruncatedUnroll
    kind: str = "pes"
    std: float = 0.01
    trunc_length: int = 50
    steps_per_jit: int = 10
    donate: bool = False  # donate the inner states to the jitted unroll (saves memory on accelerators)
    placement: Any = None  # mulo.parallel.Placement: shard the pairs (and batch) over its mesh; None: default device
    _jit: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in ESTIMATORS:
            raise ValueError(f"bad gradient_estimator {self.kind!r}; expected one of {ESTIMATORS}")
        if self.trunc_length % self.steps_per_jit:
            raise ValueError(f"steps_per_jit={self.steps_per_jit} must divide trunc_length={self.trunc_length}")
        shard = self._shardings()
        self._jit["unroll"] = jax.jit(self.unroll.unroll, donate_argnums=(1,) if self.donate else (),
                                      **shard.get("unroll", {}))
        for name in ("start", "finish", "init"):
            self._jit[name] = jax.jit(getattr(self, f"_{name}"), **shard.get(name, {}))

    def _shardings(self) -> dict:
        """in/out shardings of each jitted piece under ``placement`` (none without one: the default device)."""
        pl = self.placement
        if pl is None:
            return {}
        rep, state = pl.replicated, self.state_sharding
        return {"unroll": dict(in_shardings=(pl.branches, pl.branches, pl.chunk, rep),
                               out_shardings=(pl.branches, rep)),
                "start": dict(in_shardings=(rep, rep), out_shardings=(pl.per_pair, pl.branches)),
                "finish": dict(in_shardings=(pl.per_pair, pl.per_pair, pl.branches, rep),
                               out_shardings=(rep, state, rep, pl.per_pair)),
                "init": dict(in_shardings=(rep, rep), out_shardings=state)}

    @property
    def state_sharding(self):
        """Sharding (a tree prefix) of this estimator's state under ``placement``."""
        pl = self.placement
        return PESState(pl.branches, pl.per_pair) if self.kind == "pes" else ESState(pl.branches)

    @property
    def num_tasks(self) -> int:
        return self.unroll.num_tasks

    @property
    def num_chunks(self) -> int:
        return self.trunc_length // self.steps_per_jit

    # ---- pure pieces --------------------------------------------------------------------------------------------

    def _init(self, theta, key):
        inner = self.unroll.init(theta, key)
        if self.kind == "es":
            return ESState(inner)
        accum = jax.tree.map(lambda t: jnp.zeros((self.num_tasks,) + jnp.shape(t), jnp.result_type(t)), theta)
        return PESState(inner, accum)

    def _start(self, theta, key):
        eps = sample_perturbations(theta, key, self.num_tasks, self.std)
        return eps, antithetic(theta, eps)

    def _finish(self, eps, accum, inner: InnerState, outs: tuple[StepOutput, ...]):
        out = _concat_outputs(outs)
        if self.kind == "pes":
            grads, accum = pes_pair_gradients(eps, accum, out.meta_loss, out.mask, out.reset, self.std)
            new_state = PESState(inner, accum)
        else:
            grads = es_pair_gradients(eps, out.meta_loss, out.mask, out.reset, self.std)
            new_state = ESState(jax.tree.map(lambda x: jnp.stack([x[0], x[0]]), inner))
        grad = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
        denom = jnp.maximum(jnp.sum(out.mask, axis=0), 1.0)  # (N,)
        branch_mean = jnp.sum(out.meta_loss, axis=0) / denom  # (2, N)
        delta = jnp.sum(jnp.abs(out.meta_loss[:, 0] - out.meta_loss[:, 1]), axis=0) / denom
        metrics = {
            "meta_loss": jnp.mean(branch_mean),  # mean_i ½(masked mean ℓ⁺ + masked mean ℓ⁻), as the reference
            "train_loss": jnp.mean(jnp.sum(out.train_loss, axis=0) / denom),
            "delta_loss": jnp.mean(delta),
            "grad_norm": optax.tree.norm(grad),
            "inner_step": jnp.mean(inner.inner_step[0].astype(jnp.float32)),
            "resets": jnp.sum(out.reset),
        }
        return grad, new_state, metrics, grads

    # ---- public API ---------------------------------------------------------------------------------------------

    def init(self, theta, key: jax.Array):
        return self._jit["init"](theta, key)

    def estimate(self, theta, state, key: jax.Array, batches: Iterator, *, return_pairs: bool = False):
        """(mean meta-gradient, new state, metrics) [, per-pair gradients]. Pulls ``num_chunks`` batches."""
        k_eps, k_unroll = jax.random.split(key)
        eps, theta_pm = self._jit["start"](theta, k_eps)
        inner = state.inner
        outs = []
        for c in range(self.num_chunks):
            batch = next(batches)
            inner, out = self._jit["unroll"](theta_pm, inner, batch, jax.random.fold_in(k_unroll, c))
            outs.append(out)
        accum = state.accum if self.kind == "pes" else None
        grad, new_state, metrics, pairs = self._jit["finish"](eps, accum, inner, tuple(outs))
        if return_pairs:
            return grad, new_state, metrics, pairs
        return grad, new_state, metrics
