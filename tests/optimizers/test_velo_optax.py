"""VeLO through optax: ``as_optax`` follows optax's extra-args convention (the loss as ``value=``), requires the
planned length, and an exported VeLO takes the meta-test loop's steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mulo.evaluate.train_loop import LoopSettings, TrainLoop
from mulo.optimizers import as_optax
from mulo.optimizers import velo as V
from tests.evaluate.test_train_loop import TinyTask

NUM_STEPS, BATCH, SEED = 6, 16, 3


def _velo():
    lo = V.VeloLO("velo", V.VeloHParams(lstm_hidden_size=8, param_inits=4, **V.DEFAULTS["velo"]))
    return lo, lo.init_theta(jax.random.PRNGKey(5))


def _optax_losses(tx, task):
    """The meta-test loop's run, written as an ordinary optax loop: same initial params, same batches."""
    params = task.init(jax.random.split(jax.random.PRNGKey(SEED))[0])
    batches = next(task.dataset.batches("train", (NUM_STEPS, BATCH), SEED))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(task.loss)(params, batch, None)
        updates, opt_state = tx.update(grads, opt_state, params, value=loss)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for t in range(NUM_STEPS):
        params, opt_state, loss = step(params, opt_state, jax.tree.map(lambda x: x[t], batches))
        losses.append(float(loss))
    return np.asarray(losses)


def test_exported_velo_given_the_loss_takes_the_meta_test_loops_steps():
    task = TinyTask()
    lo, theta = _velo()
    settings = LoopSettings(num_steps=NUM_STEPS, batch_size=BATCH, steps_per_jit=NUM_STEPS, skip_test=True,
                            progress=False)
    want = np.asarray(TrainLoop(task, lo.opt_fn(theta), settings).run(seed=SEED).train_losses)
    tx = as_optax((lo, theta), num_steps=NUM_STEPS)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    got = _optax_losses(tx, task)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert want[-1] != want[0]  # it moved
    # the planned length is an input: another one takes other steps (so the match above is not vacuous)
    other = _optax_losses(as_optax((lo, theta), num_steps=1000), task)
    assert np.abs(other - want).max() > 1e-4


def test_velo_without_a_length_or_a_loss_is_one_error_line():
    lo, theta = _velo()
    with pytest.raises(ValueError, match=r"needs the planned number of training steps: as_optax\(\.\.\., "
                                         r"num_steps=N\)") as err:
        as_optax((lo, theta))
    assert "\n" not in str(err.value)
    params = {"w": jnp.ones((3, 2))}
    tx = as_optax((lo, theta), num_steps=10)
    with pytest.raises(ValueError, match=r"needs the training loss at every step: .*value=loss\)") as err:
        tx.update(params, tx.init(params), params)
    assert "\n" not in str(err.value)
    # optax.chain passes its extra args to every member: the loss reaches VeLO through it
    chained = optax.chain(optax.identity(), tx)
    updates, _ = chained.update(params, chained.init(params), params, value=jnp.float32(1.0))
    assert jax.tree.structure(updates) == jax.tree.structure(params)
