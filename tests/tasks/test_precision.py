"""Mixed precision is explicit (issue 11): ``use_bf16`` runs the task's forward/backward in bf16 in meta-training as
in meta-testing, with float32 params, gradients and LO state; ``jax_default_matmul_precision`` is stated in the config
and applied at start-up (float32 by default, never the backend's default)."""

import jax
import jax.numpy as jnp
import numpy as np

from mulo.app import runtime
from mulo.app.config import load_config
from mulo.meta.estimators import antithetic, sample_perturbations
from mulo.meta.truncation import TruncationSchedule
from mulo.meta.unroll import TruncatedUnroll
from mulo.tasks.precision import bf16_loss, task_loss
from tests.meta.test_toys import QuadraticTask, ToyLO


class SpyTask(QuadraticTask):
    """The toy quadratic, recording the dtypes its loss sees (at trace time)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def loss(self, params, batch, key):
        self.seen.append((str(jax.tree.leaves(params)[0].dtype), str(batch["x"].dtype)))
        return super().loss(params, batch, key)


def _unroll(use_bf16):
    task, lo = SpyTask(dim=3, noise=0.3), ToyLO()
    unroll = TruncatedUnroll(task, lo, TruncationSchedule("constant", 1, 5, 0), num_pairs=2, use_bf16=use_bf16)
    theta = lo.init_theta(None)
    state = unroll.init(theta, jax.random.PRNGKey(0))
    theta_pm = antithetic(theta, sample_perturbations(theta, jax.random.PRNGKey(1), 2, 0.01))
    batch = {"train": next(task.dataset.batches("train", (3, 2, 4), 0))}
    new, out = jax.jit(unroll.unroll)(theta_pm, state, batch, jax.random.PRNGKey(2))
    return task, new, out


def test_meta_training_runs_the_task_in_bf16_with_float32_state():
    task16, new16, out16 = _unroll(True)
    task32, new32, out32 = _unroll(False)
    assert set(task16.seen) == {("bfloat16", "bfloat16")}
    assert set(task32.seen) == {("float32", "float32")}
    for x in jax.tree.leaves(new16.opt_state):
        if jnp.issubdtype(x.dtype, jnp.floating):
            assert x.dtype == jnp.float32  # params and the LO's state stay float32
    assert out16.train_loss.dtype == jnp.float32
    a, b = np.asarray(out16.train_loss), np.asarray(out32.train_loss)
    assert not np.array_equal(a, b)  # bf16 really ran ...
    np.testing.assert_allclose(a, b, rtol=2e-2)  # ... within bf16's resolution (2^-8 relative per input)


def test_meta_trainer_and_meta_test_take_use_bf16_from_the_config():
    from mulo.app.sections import meta_trainer

    cfg = load_config(None, cli={"use_bf16": True, "num_tasks": 2, "trunc_length": 2, "steps_per_jit": 2})
    trainer = meta_trainer(cfg, [QuadraticTask(dim=2)], ToyLO())
    assert all(e.unroll.use_bf16 for e in trainer.estimators)
    spy = []
    f = task_loss(lambda p, b, k: spy.append(p.dtype) or jnp.sum(p), True)
    assert f(jnp.ones(3), {}, None).dtype == jnp.float32 and spy == [jnp.bfloat16]
    assert task_loss(jnp.sum, False) is jnp.sum
    assert bf16_loss.__module__ == "mulo.tasks.precision"


def test_matmul_precision_is_stated_and_applied():
    assert load_config(None).jax_default_matmul_precision == "float32"
    # conftest applied the base config's runtime keys as the CLI does: float32, not the backend's default (None)
    assert jax.config.jax_default_matmul_precision == "float32"
    try:
        runtime.set_matmul_precision("tensorfloat32")
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"
    finally:
        runtime.set_matmul_precision("float32")
