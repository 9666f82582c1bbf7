"""Inner problems of meta-training and their jitted, truncated unroll.

An estimator owns ``num_pairs`` inner problems (slots), each a fresh optimizee trained by the learned optimizer (LO)
with its own minibatch stream. PES and ES run every slot twice, with θ + ε_i and θ − ε_i, so states carry two leading
axes: (2, num_pairs). Both branches use the same data and the same PRNG keys (common random numbers), and therefore
draw the same episode lengths, initial params and resets.

One inner step of slot i (reference §4.3):

* if the slot finished its episode at the previous step (``inner_step >= length``), it is reset: new optimizee params,
  new LO state, a new episode length, ``inner_step = 0``. The step's data is consumed but unused and the step emits
  loss 0 and **mask 0**;
* otherwise one training step: (ℓ, ∇) = value_and_grad(task.loss)(params, batch) (in bf16 with ``use_bf16``,
  ``mulo.tasks.precision``; params, gradients and the LO stay float32), LO update, ``inner_step += 1``,
  mask 1. The meta-loss of the step is ``task.normalizer`` of: ℓ (``meta_loss_split="train"``, the pre-update
  training-batch loss), or the post-update loss on the same batch (``same_data``) or on a meta-valid batch
  (``meta_valid``).

``unroll`` is one jitted ``lax.scan`` over ``steps_per_jit`` steps with both branches and all slots batched (vmap over
± and over slots inside the scan body). Resets are rare (one per episode of 100-1000 steps), so the body computes
the training step for every slot and then, under a *scalar* ``lax.cond(any slot reset)``, the reset states: the cond
is outside every vmap, so it stays a real branch and the (costly) re-initialisation runs only on steps where some
slot actually resets, instead of a select that would evaluate both branches at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mulo.meta.truncation import TruncationSchedule
from mulo.registry import META_LOSS_SPLITS
from mulo.tasks.precision import task_loss



class InnerState(NamedTuple):
    """States of all inner problems of one estimator; every leaf has leading axes (2, num_pairs)."""

    opt_state: Any  # the LO's optimizer state (holds the optimizee params)
    inner_step: jax.Array  # int32: training steps done in the current episode
    length: jax.Array  # int32: length of the current episode


class StepOutput(NamedTuple):
    meta_loss: jax.Array  # (2, N) normalised meta-loss of the step (0 where mask is 0)
    train_loss: jax.Array  # (2, N) raw training-batch loss (0 where mask is 0)
    mask: jax.Array  # (N,) 1.0 for a training step, 0.0 for a reset step
    reset: jax.Array  # (N,) 1.0 where the slot was reset at this step


def tree_where(cond: jax.Array, a: Any, b: Any) -> Any:
    """Per-slot select: ``cond`` has the leading axes of every leaf of ``a`` and ``b``."""

    def pick(x, y):
        c = jnp.reshape(cond, cond.shape + (1,) * (x.ndim - cond.ndim))
        return jnp.where(c, x, y)

    return jax.tree.map(pick, a, b)


@dataclass(frozen=True)
class TruncatedUnroll:
    """The inner problems of one task under one LO; all methods are pure (jit them from outside or use ``unroll``)."""

    task: Any
    lo: Any
    schedule: TruncationSchedule
    num_pairs: int  # the estimator's antithetic pairs: inner problems of this task
    meta_loss_split: str = "train"
    use_bf16: bool = False  # the task's forward/backward in bf16 (config key use_bf16)

    def __post_init__(self):
        if self.meta_loss_split not in META_LOSS_SPLITS:
            raise ValueError(f"bad meta_loss_split {self.meta_loss_split!r}; expected one of {META_LOSS_SPLITS}")

    @property
    def data_splits(self) -> tuple[str, ...]:
        return ("train", "meta_valid") if self.meta_loss_split == "meta_valid" else ("train",)

    # ---- one slot -----------------------------------------------------------------------------------------------

    def _opt(self, theta):
        return self.lo.opt_fn(theta, self.task.update_scales)

    def _fresh_slot(self, theta, key):
        """A new episode: new params, LO state and length (inner_step 0)."""
        k_init, k_len = jax.random.split(key)
        params = self.task.init(k_init)
        length = self.schedule.sample_length(k_len)
        opt_state = self._opt(theta).init(params, length)
        return InnerState(opt_state, jnp.zeros((), jnp.int32), length)

    def _train_slot(self, theta, state: InnerState, batch, key):
        """One training step of one slot: (new state, normalised meta-loss, raw train loss)."""
        opt = self._opt(theta)
        k_loss, k_upd, k_meta = jax.random.split(key, 3)
        params = opt.params(state.opt_state)
        loss_fn = task_loss(self.task.loss, self.use_bf16)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch["train"], k_loss)
        opt_state = opt.update(state.opt_state, grads, loss, k_upd)
        if self.meta_loss_split == "train":
            meta = loss
        else:
            split = "train" if self.meta_loss_split == "same_data" else "meta_valid"
            meta = loss_fn(opt.params(opt_state), batch[split], k_meta)
        new = InnerState(opt_state, state.inner_step + 1, state.length)
        return new, self.task.normalizer(meta), loss

    # ---- all slots, both branches -------------------------------------------------------------------------------

    def init(self, theta, key: jax.Array) -> InnerState:
        """Initial states with leading axes (2, N): both branches identical, random initial inner steps."""
        k_slots, k_off = jax.random.split(key)
        keys = jax.random.split(k_slots, self.num_pairs)
        one = jax.vmap(self._fresh_slot, in_axes=(None, 0))(theta, keys)
        one = one._replace(inner_step=self.schedule.sample_offset(k_off, (self.num_pairs,)))
        return jax.tree.map(lambda x: jnp.stack([x, x]), one)

    def step(self, theta_pm, state: InnerState, batch, key):
        """One inner step of every slot and branch. ``theta_pm`` has leading axes (2, N); ``batch`` leaves (N, B, ...)."""
        slot_keys = jax.random.split(key, self.num_pairs)
        k_train = jax.vmap(lambda k: jax.random.fold_in(k, 0))(slot_keys)
        k_reset = jax.vmap(lambda k: jax.random.fold_in(k, 1))(slot_keys)
        done = state.inner_step[0] >= state.length[0]  # (N,), identical in both branches

        per_slot = jax.vmap(self._train_slot, in_axes=(0, 0, 0, 0))  # over slots
        both = jax.vmap(per_slot, in_axes=(0, 0, None, None))  # over ±, sharing data and keys
        trained, meta, loss = both(theta_pm, state, batch, k_train)

        def with_resets(trained):
            fresh = jax.vmap(jax.vmap(self._fresh_slot), in_axes=(0, None))(theta_pm, k_reset)
            return tree_where(jnp.broadcast_to(done, (2,) + done.shape), fresh, trained)

        new_state = jax.lax.cond(jnp.any(done), with_resets, lambda t: t, trained)
        keep = (~done).astype(meta.dtype)
        # where, not a product: a finished slot's (discarded) training step may be NaN, and NaN * 0 is NaN.
        out = StepOutput(meta_loss=jnp.where(done, 0.0, meta), train_loss=jnp.where(done, 0.0, loss), mask=keep,
                         reset=done.astype(meta.dtype))
        return new_state, out

    def unroll(self, theta_pm, state: InnerState, batches, key):
        """``steps_per_jit`` inner steps (the leading axis of ``batches``); outputs stacked to (S, ...)."""
        num = jax.tree.leaves(batches)[0].shape[0]
        keys = jax.random.split(key, num)

        def body(carry, xs):
            batch, k = xs
            return self.step(theta_pm, carry, batch, k)

        return jax.lax.scan(body, state, (batches, keys))
