"""The outer (meta) optimizer: AdamW with linear warmup + cosine decay, meta-gradient clipping before Adam, and
skipping of non-finite meta-gradients.

* ``schedule`` non-empty: ``optax.adamw(warmup_cosine_decay_schedule(init_value, peak_value, warmup_steps,
  decay_steps, end_value, exponent), weight_decay=meta_weight_decay)``; ``decay_steps`` is the total length
  *including* the warmup (optax's convention, as the reference §4.1).
* ``schedule`` empty: plain Adam with ``meta_learning_rate`` (the reference's ``opt_base.Adam``), no weight decay.
* ``meta_grad_clip``: ``clip_by_global_norm`` of the meta-gradient *before* Adam. The reference chained the clip after
  AdamW, where it clipped the already lr-scaled update and did nothing (§9.10).
* Weight decay is not applied to the LO's decay-rate parameters (leaves whose path contains "decay"): decaying them
  towards 0 pulls the learned momentum rates, which is not a regulariser of the MLP (§9.10).
* A meta-gradient with any NaN/inf leaves θ and the optimizer state untouched; the train loop counts such steps
  (``skipped_steps``) instead of silently zeroing them as the reference did. Not ``optax.apply_if_finite``: it runs
  the update inside a ``lax.cond`` and applies it outside, which XLA compiles to other last bits of θ (measured on
  CPU, jax 0.10.2 / optax 0.2.8: 1 ulp of a θ leaf from the second outer step of the toy run of
  tests/meta/test_checkpoint_v1.py), so today's checkpoints would not resume bit-exactly and θ files would change;
  it also wraps the optimizer state in its own (``ApplyIfFiniteState``), which checkpoints written before cannot fill.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from mulo.errors import ConfigError
from mulo.registry import SCHEDULE_KEYS



def lr_schedule(schedule: Mapping[str, Any], meta_learning_rate: float) -> Callable[[Any], Any]:
    if not schedule:
        return optax.constant_schedule(meta_learning_rate)
    unknown = sorted(set(schedule) - set(SCHEDULE_KEYS))
    missing = [k for k in SCHEDULE_KEYS[:4] if k not in schedule]
    if unknown or missing:
        raise ConfigError(f"bad schedule {dict(schedule)!r}: unknown keys {unknown}, missing keys {missing}; "
                          f"expected {', '.join(SCHEDULE_KEYS)} (end_value, exponent optional)")
    if schedule["decay_steps"] <= schedule["warmup_steps"]:
        raise ConfigError(f"bad schedule: decay_steps={schedule['decay_steps']} must exceed warmup_steps="
                          f"{schedule['warmup_steps']} (decay_steps includes the warmup)")
    return optax.warmup_cosine_decay_schedule(
        init_value=float(schedule["init_value"]), peak_value=float(schedule["peak_value"]),
        warmup_steps=int(schedule["warmup_steps"]), decay_steps=int(schedule["decay_steps"]),
        end_value=float(schedule.get("end_value", 0.0)), exponent=float(schedule.get("exponent", 1.0)))


def _decay_mask(theta: Any) -> Any:
    def keep(path, _):
        return not any("decay" in str(getattr(p, "key", getattr(p, "name", p))) for p in path)

    return jax.tree_util.tree_map_with_path(keep, theta)


def build_outer_optimizer(schedule: Mapping[str, Any], meta_learning_rate: float, meta_weight_decay: float,
                          meta_grad_clip: float | None):
    """(optax transformation, lr schedule) as described in the module docstring."""
    lr = lr_schedule(schedule, meta_learning_rate)
    if schedule:
        core = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=meta_weight_decay, mask=_decay_mask)
    else:
        core = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
    parts = ([optax.clip_by_global_norm(meta_grad_clip)] if meta_grad_clip else []) + [core]
    return optax.chain(*parts), lr


def from_config(cfg):
    return build_outer_optimizer(dict(cfg.schedule), cfg.meta_learning_rate, cfg.meta_weight_decay,
                                 cfg.meta_grad_clip)


def combine_meta_gradients(grads: Sequence[Any], scales: Sequence[float] | None = None) -> Any:
    """The meta-gradient of one outer step from the tasks' estimates: mean_j ĝ_j (``scales`` None) or
    mean_j ĝ_j / c_j, the gradient of the mean of the meta-losses each divided by its task's scale c_j
    (``meta_loss_norm``, see ``mulo.meta.train``)."""
    if scales is None:
        return jax.tree.map(lambda *g: sum(g) / len(g), *grads)
    if len(scales) != len(grads):
        raise ValueError(f"{len(scales)} loss scales for {len(grads)} meta-gradients")
    inv = [1.0 / float(c) for c in scales]
    return jax.tree.map(lambda *g: sum(x * w for x, w in zip(g, inv)) / len(g), *grads)


def all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def apply_meta_gradient(tx: optax.GradientTransformation, theta: Any, opt_state: Any, grad: Any):
    """(new θ, new opt state, finite): one outer step, or no change at all when ``grad`` has a NaN/inf."""
    finite = all_finite(grad)
    safe = optax.tree.where(finite, grad, optax.tree.zeros_like(grad))  # keep NaN out of both branches
    updates, new_state = tx.update(safe, opt_state, theta)
    new_theta, new_state = optax.tree.where(finite, (optax.apply_updates(theta, updates), new_state),
                                            (theta, opt_state))
    return new_theta, new_state, finite
