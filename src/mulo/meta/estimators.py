"""Meta-gradient estimators over truncated unrolls: truncated PES and truncated ES (antithetic).

Notation (reference §4.4): θ the LO meta-parameters, N = ``num_pairs`` antithetic pairs, σ = ``std``, K =
``trunc_length`` (a window): the ``estimator`` section (``EstimatorHParams``); S = ``steps_per_jit``. Each estimator
is one module (``mulo.meta.pes``, ``mulo.meta.es``) that registers a ``Rule``; ``TruncatedEstimator`` runs any rule. One ``estimate`` call:

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
which drops the earlier windows' perturbations from that one loss. ``tests/meta/test_pes.py`` checks the estimate
against the exact gradient of the unrolled objective with an episode that ends inside a window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from mulo.hparams import POSITIVE, hparam
from mulo.meta.unroll import InnerState, StepOutput, TruncatedUnroll


@dataclass(frozen=True)
class EstimatorHParams:
    """The ``estimator`` section of the truncated estimators (pes, es): σ, K and N."""

    std: float = hparam(0.01, "std of the meta-parameter perturbations", min=POSITIVE)
    trunc_length: int = hparam(50, "truncation length K: inner steps per meta-gradient estimate (a multiple of "
                                   "steps_per_jit)", min=1)
    num_pairs: int = hparam(8, "antithetic perturbation pairs per task (the inner problems of each task)", min=1)


class Rule(Protocol):
    """What one estimator adds to the truncated-unroll machinery (``mulo.meta.pes``, ``mulo.meta.es``): its
    hyper-parameters (``hparams.std``, ``trunc_length``, ``num_pairs``) and how it turns a window into per-pair
    gradients. ``carry`` is the estimator's own state beside the inner states (PES: the accumulated perturbations;
    ES: None); it has leading axis N where it has arrays (sharded as the pairs)."""

    name: str
    hparams: Any

    def state(self, inner: InnerState, carry: Any) -> Any: ...  # the estimator state (a NamedTuple with .inner)

    def init_carry(self, theta: Any) -> Any: ...

    def carry_of(self, state: Any) -> Any: ...

    def state_sharding(self, placement: Any) -> Any: ...

    def pair_gradients(self, eps: Any, carry: Any, inner: InnerState, out: StepOutput) -> tuple[Any, Any]:
        """(per-pair gradients with leading axis N, the new estimator state) after a window: ``eps`` its
        perturbations, ``inner`` the inner states at its end, ``out`` its StepOutput stacked to (K, 2, N)."""
        ...


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


def scale_rows(weights: jax.Array, tree: Any) -> Any:
    return jax.tree.map(lambda x: x * jnp.reshape(weights, weights.shape + (1,) * (x.ndim - 1)), tree)


def _concat_outputs(outs: tuple[StepOutput, ...]) -> StepOutput:
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)


@dataclass(frozen=True)
class TruncatedEstimator:
    """A truncated estimator (``rule``: PES, ES, ...) for one task. ``estimate`` pulls K/S batches of shape
    (S, N, B, ...) from ``batches``; N = ``rule.hparams.num_pairs`` = ``unroll.num_pairs``."""

    unroll: TruncatedUnroll
    rule: Rule
    steps_per_jit: int = 10
    donate: bool = False  # donate the inner states to the jitted unroll (saves memory on accelerators)
    placement: Any = None  # mulo.parallel.Placement: shard the pairs (and batch) over its mesh; None: default device
    _jit: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if self.unroll.num_pairs != self.rule.hparams.num_pairs:
            raise ValueError(f"the unroll has {self.unroll.num_pairs} inner problems per task, the estimator "
                             f"{self.rule.hparams.num_pairs} pairs")
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
    def kind(self) -> str:
        return self.rule.name

    @property
    def std(self) -> float:
        return self.rule.hparams.std

    @property
    def trunc_length(self) -> int:
        return self.rule.hparams.trunc_length

    @property
    def state_sharding(self):
        """Sharding (a tree prefix) of this estimator's state under ``placement``."""
        return self.rule.state_sharding(self.placement)

    @property
    def num_pairs(self) -> int:
        return self.unroll.num_pairs

    @property
    def num_chunks(self) -> int:
        return self.trunc_length // self.steps_per_jit

    # ---- pure pieces --------------------------------------------------------------------------------------------

    def _init(self, theta, key):
        return self.rule.state(self.unroll.init(theta, key), self.rule.init_carry(theta))

    def _start(self, theta, key):
        eps = sample_perturbations(theta, key, self.num_pairs, self.std)
        return eps, antithetic(theta, eps)

    def _finish(self, eps, carry, inner: InnerState, outs: tuple[StepOutput, ...]):
        out = _concat_outputs(outs)
        grads, new_state = self.rule.pair_gradients(eps, carry, inner, out)
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
        carry = self.rule.carry_of(state)
        inner = state.inner
        outs = []
        for c in range(self.num_chunks):
            batch = next(batches)
            inner, out = self._jit["unroll"](theta_pm, inner, batch, jax.random.fold_in(k_unroll, c))
            outs.append(out)
        grad, new_state, metrics, pairs = self._jit["finish"](eps, carry, inner, tuple(outs))
        if return_pairs:
            return grad, new_state, metrics, pairs
        return grad, new_state, metrics
