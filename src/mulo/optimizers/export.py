"""Use a trained learned optimizer as an ordinary ``optax.GradientTransformation``.

Example (a trained μLO on your own muP model; ``update_scales`` are its per-tensor μP scales: hidden_lr_mult/fan_in
for hidden matrices, 1 for everything else, e.g. ``mulo.tasks.base.update_scales(param_meta)``)::

    import jax, optax
    from mulo.optimizers import as_optax

    tx = as_optax("checkpoints/my_run/theta_final.msgpack", update_scales=scales)
    tx = as_optax("pretrained:cpu_mulo_m_fmnist", update_scales=scales)  # shipped with mulo
    tx = as_optax("hf:btherien/mulo", update_scales=scales)  # the paper's μLO_M, from the Hugging Face hub
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)  # the LO needs the params
        return optax.apply_updates(params, updates), opt_state, loss

The LO keeps its accumulators and step counter in ``opt_state``; it does not keep a copy of the params.

VeLO (``velo`` / ``mup_velo`` θ, e.g. ``hf:amoudgl/velo-4000``) also reads the training loss and the planned length,
so it follows optax's extra-args convention (``optax.GradientTransformationExtraArgs``)::

    tx = as_optax("velo:velo-4000", num_steps=10_000)  # num_steps is required for VeLO
    ...
    updates, opt_state = tx.update(grads, opt_state, params, value=loss)  # value= is required for VeLO

Without ``num_steps`` (or without ``value=``) VeLO is one ValueError line, not a silent constant: its fraction-of-
training and loss features would be wrong from the first step. Other LOs ignore ``value``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import optax

from mulo.optimizers import sources
from mulo.optimizers.theta_io import load_theta
from mulo.parallel import place_like_params


def as_optax(lo_checkpoint: str | os.PathLike | tuple, update_scales: Any = None,
             num_steps: int | None = None) -> optax.GradientTransformationExtraArgs:
    """An optax transformation running a learned optimizer.

    lo_checkpoint: a θ file path (written by ``save_theta``), a named source (``pretrained:NAME``,
      ``hf:OWNER/NAME``, a folder in the hub layout: ``mulo.optimizers.sources``) or a ``(lo, theta)`` pair.
    update_scales: pytree of per-tensor μP update scales, shaped like the params (μLO only; None = 1 everywhere,
      which is right for SP models and for the SP LO, which ignores it).
    num_steps: the planned training length: required (>= 1) for VeLO, which reads the fraction of it done; stored
      in the state otherwise.
    Its ``update(grads, state, params, value=loss)`` requires ``params`` (and, for VeLO, the loss as ``value``); the
    returned updates are ``new_params - params``.
    """
    if isinstance(lo_checkpoint, (str, os.PathLike)) and sources.is_named(lo_checkpoint):
        lo, theta, _ = sources.load_source(lo_checkpoint)
    elif isinstance(lo_checkpoint, (str, os.PathLike)):
        lo, theta, _ = load_theta(lo_checkpoint)
    else:
        lo, theta = lo_checkpoint
    needs_loss = getattr(lo, "needs_loss", False)
    if needs_loss and (num_steps is None or isinstance(num_steps, bool) or int(num_steps) < 1):
        raise ValueError(f"{lo.name} needs the planned number of training steps: as_optax(..., num_steps=N), N >= 1 "
                         f"(got {num_steps!r})")
    opt = lo.opt_fn(theta, update_scales)

    def init_fn(params):
        state = opt.init(params, 0 if num_steps is None else int(num_steps))
        # sharded (FSDP-style) params: each device keeps only its part of the state, the part of its params
        return place_like_params(state._replace(params=None), params)

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args  # other transformations' extra arguments (optax.chain passes them all)
        if params is None:
            raise ValueError("the learned optimizer needs the params: call tx.update(grads, opt_state, params)")
        if needs_loss and value is None:
            raise ValueError(f"{lo.name} needs the training loss at every step: tx.update(grads, opt_state, params, "
                             f"value=loss)")
        new_state = opt.update(state._replace(params=params), updates, value, None)
        new_params = opt.params(new_state)
        deltas = jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new_params, params)
        return deltas, new_state._replace(params=None)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
