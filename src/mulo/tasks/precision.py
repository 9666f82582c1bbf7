"""Mixed precision of a task's forward/backward pass (config key ``use_bf16``), one definition for meta-training,
meta-testing and sweeps: the loss is computed in bf16 (params and float inputs cast down inside it) and returned in
float32, so the gradients with respect to the float32 master params are float32 and every optimizer (the learned
optimizer's features and accumulators included) works in float32. Integer leaves (labels, token ids) are never cast:
bf16 has 8 significant bits, so label 999 would become 1000."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Cast the floating-point leaves of ``tree`` to ``dtype``; integer leaves (labels, token ids) stay as they are."""
    return jax.tree.map(lambda x: x.astype(dtype) if _is_float(x) else x, tree)


def bf16_loss(loss_fn: Callable) -> Callable:
    """``loss_fn`` computed in bf16 (params and float inputs cast down inside) with a float32 result, so gradients
    with respect to the float32 master params are float32. Integer labels are never cast (§9.5)."""

    def wrapped(params, batch, *rest):
        out = loss_fn(cast_floats(params, jnp.bfloat16), cast_floats(batch, jnp.bfloat16), *rest)
        return jax.tree.map(lambda x: x.astype(jnp.float32), out)

    return wrapped


def task_loss(loss_fn: Callable, use_bf16: bool) -> Callable:
    """The loss as the config's ``use_bf16`` asks: ``bf16_loss(loss_fn)`` or ``loss_fn`` itself."""
    return bf16_loss(loss_fn) if use_bf16 else loss_fn
