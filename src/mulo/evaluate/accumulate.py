"""Gradient accumulation: the loss and gradients of one batch computed over N micro-batches (``lax.scan``).

    grad_fn = value_and_grad_accumulated(task.loss, steps=4)
    loss, grads = grad_fn(params, batch, key)      # batch leaves (B, ...), B divisible by 4

``local_batch_size`` stays the batch of one update: ``gradient_accumulation_steps = N`` splits it into N micro-batches
of B / N examples, runs forward + backward on one at a time (so only one micro-batch's activations are alive) and
returns the mean of their losses and gradients. For a loss that is a mean over examples (every mulo task whose
batches have no padding) this is the loss and gradient of the whole batch, up to float rounding: changing N changes
memory, not results. (A padded LM batch, e.g. lm1b, weighs each micro-batch's token mean equally.)

The returned function is pure in ``(params, batch, key)``, so it can be jitted, scanned and vmapped (e.g. over seeds).
Micro-batch ``i`` gets ``fold_in(key, i)`` (dropout masks differ between micro-batches); N = 1 is exactly
``jax.value_and_grad(loss_fn)``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def split_batch(batch: Any, steps: int) -> Any:
    """Leaves (B, ...) -> (steps, B // steps, ...); example ``j`` of micro-batch ``i`` is example ``i * B/steps + j``."""

    def split(x):
        b = x.shape[0]
        if b % steps:
            raise ValueError(f"batch of {b} examples cannot be split into {steps} equal micro-batches")
        return x.reshape((steps, b // steps) + x.shape[1:])

    return jax.tree.map(split, batch)


def value_and_grad_accumulated(loss_fn: Callable[..., jax.Array], steps: int) -> Callable[..., tuple]:
    """``f(params, batch, key) -> (loss, grads)``: the mean over ``steps`` micro-batches of ``loss_fn``'s value and
    gradient with respect to ``params``. Losses and gradients are summed in float32 (or the parameters' dtype if wider)."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"gradient accumulation needs steps >= 1, got {steps}")
    grad_fn = jax.value_and_grad(loss_fn)
    if steps == 1:
        return grad_fn

    def accumulated(params, batch, key):
        micro = split_batch(batch, steps)
        acc_dtype = lambda x: jnp.promote_types(x.dtype, jnp.float32)  # noqa: E731
        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, acc_dtype(p)), params)

        def body(carry, inputs):
            loss_sum, grad_sum = carry
            mb, i = inputs
            loss, grads = grad_fn(params, mb, jax.random.fold_in(key, i))
            grad_sum = jax.tree.map(lambda s, g: s + g.astype(s.dtype), grad_sum, grads)
            return (loss_sum + loss.astype(jnp.float32), grad_sum), None

        (loss_sum, grad_sum), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                               (micro, jnp.arange(steps)))
        grads = jax.tree.map(lambda s, p: (s / steps).astype(p.dtype), grad_sum, params)
        return loss_sum / steps, grads

    return accumulated
