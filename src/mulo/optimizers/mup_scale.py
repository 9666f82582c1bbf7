"""μP step scaling of the learned optimizers, composed as optax pieces.

Each LO computes every tensor's *unscaled* update (``-step``); the μLO's per-tensor update scales (hidden_lr_mult /
fan_in for hidden matrices, 1 otherwise; ``mulo.tasks.base.update_scales``) then multiply it, the transformation
``scale_by_tree(scales)`` (MuAdam's too: ``optax.chain(optax.adam(lr), scale_by_tree(scales))``), and
``optax.apply_updates`` adds it to the params. The SP LOs ignore the scales (``optax.identity()``). Same numbers as
the former ``p - step * scale`` in each LO, bit for bit (tests/optimizers/test_lo_steps_fixture.py):
``p + (x · -c) · s`` is ``p - (x · c) · s`` exactly, and the sign sits on the LO's constant step_mult so that XLA
folds ``c · s`` (both constants) the same way in both.

The Pallas kernel of the Adafactor-MLP LO (``adafac_pallas``) keeps the scale inside: it writes the new params of a
matrix in place in its single pass over the tensor, and taking the scaling out would add a pass that reads and writes
the whole matrix again.
"""

from __future__ import annotations

from typing import Any

import jax
import optax


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiplies each update tensor by its entry of ``scales`` (a pytree shaped like the updates). Stateless."""
    return optax.stateless(lambda updates, params=None: jax.tree.map(lambda u, s: u * s, updates, scales))


def step_scaling(update_scales: Any, uses_mup: bool) -> optax.GradientTransformation:
    """``scale_by_tree(update_scales)`` for a μLO given scales, else ``optax.identity()`` (SP, or scales all 1)."""
    return scale_by_tree(update_scales) if uses_mup and update_scales is not None else optax.identity()


def check_scales(update_scales: Any, params: Any, uses_mup: bool) -> None:
    """A μLO's update scales must be shaped like the params (ValueError otherwise)."""
    if uses_mup and update_scales is not None and jax.tree.structure(update_scales) != jax.tree.structure(params):
        raise ValueError("update_scales must have the structure of the params: got "
                         f"{jax.tree.structure(update_scales)} for params {jax.tree.structure(params)}")


def apply_steps(scaling: optax.GradientTransformation, params: Any, steps: Any) -> Any:
    """The new params: ``params`` plus the scaled unscaled updates ``steps``, each in its param's dtype."""
    updates, _ = scaling.update(steps, scaling.init(params), params)
    return optax.apply_updates(params, updates)
