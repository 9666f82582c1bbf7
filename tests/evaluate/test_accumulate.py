"""Gradient accumulation (--gradient_accumulation_steps): N micro-batches give the loss and gradients of one big batch."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulo.app.config import load_config
from mulo.errors import ConfigError
from mulo.evaluate.accumulate import split_batch, value_and_grad_accumulated
from mulo.evaluate.train_loop import LoopSettings, TrainLoop
from mulo.optimizers import adam
from mulo.tasks import TaskSettings, get_task

from tests.evaluate.test_train_loop import TinyTask


def _squared_error(params, batch, key):
    del key
    return jnp.mean((batch["x"] * params["w"] + params["b"] - batch["y"]) ** 2)


def test_hand_computed_case():
    """loss = mean((w x + b - y)^2) on x = (1, 2, 3, 4), y = 0, w = 1, b = 0: residuals r = x.
    loss = 30/4 = 7.5, dL/dw = mean(2 r x) = 2*30/4 = 15, dL/db = mean(2 r) = 2*10/4 = 5, whatever the split."""
    params = {"w": jnp.float32(1.0), "b": jnp.float32(0.0)}
    batch = {"x": jnp.array([1.0, 2.0, 3.0, 4.0]), "y": jnp.zeros(4)}
    for steps in (1, 2, 4):
        loss, grads = jax.jit(value_and_grad_accumulated(_squared_error, steps))(params, batch, jax.random.key(0))
        assert float(loss) == pytest.approx(7.5)
        assert float(grads["w"]) == pytest.approx(15.0)
        assert float(grads["b"]) == pytest.approx(5.0)
    # the micro-batches really are separate: micro-batch 0 alone (x = 1, 2) has loss 2.5, not 7.5
    first = jax.tree.map(lambda x: x[0], split_batch(batch, 2))
    np.testing.assert_array_equal(first["x"], [1.0, 2.0])
    assert float(_squared_error(params, first, None)) == pytest.approx(2.5)


def test_exact_against_one_big_batch_on_a_mumlp():
    task = get_task("mumlp-w16-d2_fashionmnist-28x28x1", TaskSettings())
    params = task.init(jax.random.key(1))
    leaves, tree = jax.tree.flatten(params)  # the readout starts at zero (muP): move off it so every gradient is live
    noise = [0.1 * jax.random.normal(k, p.shape) for k, p in zip(jax.random.split(jax.random.key(3), len(leaves)),
                                                                     leaves)]
    params = jax.tree.unflatten(tree, [p + n for p, n in zip(leaves, noise)])
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(12, 28, 28, 1)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 10, size=12), jnp.int32)}
    key = jax.random.key(2)
    big_loss, big_grads = jax.value_and_grad(task.loss)(params, batch, key)
    for steps in (2, 3, 4):
        loss, grads = jax.jit(value_and_grad_accumulated(task.loss, steps))(params, batch, key)
        np.testing.assert_allclose(float(loss), float(big_loss), rtol=1e-6)
        chex.assert_trees_all_close(grads, big_grads, rtol=2e-5, atol=1e-7)
        chex.assert_trees_all_equal_dtypes(grads, params)
        chex.assert_trees_all_equal_shapes(grads, params)
    # a wrong split would show: the first micro-batch's gradient alone is not the big batch's
    half = jax.tree.map(lambda x: x[:6], batch)
    _, g_half = jax.value_and_grad(task.loss)(params, half, key)
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])  # noqa: E731
    assert np.all(np.isfinite(flat(big_grads))) and np.count_nonzero(flat(big_grads)) > 0.9 * flat(big_grads).size
    assert not np.allclose(flat(g_half), flat(big_grads), rtol=1e-3)


def test_one_step_is_plain_value_and_grad():
    params = {"w": jnp.float32(0.3), "b": jnp.float32(-0.2)}
    batch = {"x": jnp.arange(6.0), "y": jnp.ones(6)}
    a = value_and_grad_accumulated(_squared_error, 1)(params, batch, jax.random.key(0))
    b = jax.value_and_grad(_squared_error)(params, batch, jax.random.key(0))
    chex.assert_trees_all_equal(a, b)


def test_pure_in_params_batch_key_so_it_vmaps_over_seeds():
    fn = value_and_grad_accumulated(_squared_error, 2)
    params = {"w": jnp.array([1.0, 2.0]), "b": jnp.zeros(2)}  # two "seeds"
    batch = {"x": jnp.array([[1.0, 2.0, 3.0, 4.0]] * 2), "y": jnp.zeros((2, 4))}
    keys = jax.random.split(jax.random.key(0), 2)
    loss, grads = jax.vmap(fn)(params, batch, keys)
    np.testing.assert_allclose(loss, [7.5, 30.0], rtol=1e-6)  # w = 2 doubles the residuals: 4x the loss
    np.testing.assert_allclose(grads["w"], [15.0, 30.0], rtol=1e-6)


def test_uneven_split_is_refused():
    with pytest.raises(ValueError, match="cannot be split into 4"):
        split_batch({"x": jnp.zeros(6)}, 4)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps.*divisor of local_batch_size=6"):
        load_config(None, cli={"gradient_accumulation_steps": 4, "local_batch_size": 6})


def test_train_loop_same_losses_with_and_without_accumulation():
    """The meta-test / sweep training loop: 4 micro-batches of 8 train like one batch of 32."""
    task = TinyTask()
    cfg = load_config(None, cli={"gradient_accumulation_steps": 4, "local_batch_size": 32})
    settings = LoopSettings.from_config(cfg)
    assert settings.grad_accumulation == 4 and settings.batch_size == 32
    base = LoopSettings(num_steps=6, batch_size=32, steps_per_jit=3, skip_test=True, progress=False)
    runs = {}
    for n in (1, 4):
        s = LoopSettings(**{**base.__dict__, "grad_accumulation": n})
        runs[n] = TrainLoop(task, adam(0.05), s).run(seed=3).train_losses
    assert len(runs[1]) == 6 and runs[1][-1] < runs[1][0]  # it trains
    np.testing.assert_allclose(runs[4], runs[1], rtol=1e-5)
