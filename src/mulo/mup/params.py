"""What μP metadata gives a user's model: the μP initialisation, the readout multiplier and the update scales.

All three come from ``mulo.tasks.base`` (``init_std``, ``readout_multiplier``, ``update_scales``), the one place where
mulo's own tasks get theirs.

The readout multiplier is part of the model's forward pass: mulo cannot inject it from outside (a params pytree does
not say where the readout's output goes). The model must multiply its readout's output (bias included) by
``readout_multiplier(meta)`` (``output_mult / width``), and scale its attention logits by 1/d_head, not 1/sqrt(d_head).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mulo.errors import MuloError
from mulo.tasks import base
from mulo.tasks.base import ParamMeta

_is_meta = lambda x: isinstance(x, ParamMeta)


def update_scales(meta: Any, hidden_lr_mult: float = 1.0) -> Any:
    """Per-tensor μP update scales (``hidden_lr_mult / fan_in`` for hidden matrices, 1 elsewhere), the structure of
    the params: pass them to ``mulo.optimizers.as_optax(..., update_scales=...)`` or ``muadam``."""
    return base.update_scales(meta, hidden_lr_mult)


def mup_init(params: Any, meta: Any, key: jax.Array) -> Any:
    """``params`` re-initialised under μP: input and hidden weights N(0, 1/fan_in), readout weights zero, vectors
    (biases, norms) as they were. Same structure, shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(params)
    metas = treedef.flatten_up_to(meta)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for p, m, k in zip(leaves, metas, keys):
        std = base.init_std(m)
        if std is None:
            out.append(p)
        else:
            out.append((std * jax.random.normal(k, jnp.shape(p), jnp.float32)).astype(jnp.asarray(p).dtype))
    return jax.tree.unflatten(treedef, out)


def readout_multiplier(meta: Any, output_mult: float = 1.0) -> float:
    """The number the model must multiply its readout's output by (``output_mult / fan_in`` of the readout).

    Every readout (role ``output``) must have the same fan_in; a model without one is an error."""
    fan_ins = {m.fan_in for m in jax.tree.leaves(meta, is_leaf=_is_meta) if m.role == "output"}
    if not fan_ins:
        raise MuloError("no readout (role 'output') in the metadata: mark it with mulo.mup.Override(pattern, "
                        "role='output')")
    if len(fan_ins) > 1:
        raise MuloError(f"readouts of different fan_ins {sorted(fan_ins)}: use mulo.tasks.base.readout_multiplier "
                        f"on each")
    return base.readout_multiplier(ParamMeta("output", fan_ins.pop()), output_mult)
