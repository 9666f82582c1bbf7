"""A tiny test-only task (softmax regression on a fixed synthetic dataset) and checks of the meta-test training loop
that do not need the real tasks: chunking, evaluation, seeds, divergence, bf16.

Other test files of the evaluation area import ``TinyTask`` from here."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mulo.evaluate.train_loop import LoopSettings, TrainLoop, _chunks, tail_mean
from mulo.optimizers import adam, sgd
from mulo.tasks.precision import bf16_loss, cast_floats
from mulo.tasks.base import ParamMeta, update_scales


class TinyDataset:
    def __init__(self, dim=8, classes=4, n=256, seed=0):
        rng = np.random.default_rng(seed)
        teacher = rng.normal(size=(dim, classes))
        self.name = "tiny"
        self.x = {s: rng.normal(size=(n, dim)).astype(np.float32) for s in ("train", "test")}
        self.y = {s: np.argmax(self.x[s] @ teacher, axis=1).astype(np.int32) for s in ("train", "test")}

    def batches(self, split, shape, seed):
        rng = np.random.default_rng(seed)
        while True:
            idx = rng.integers(0, len(self.y[split]), size=shape)
            yield {"x": self.x[split][idx], "y": self.y[split][idx]}

    def eval_batches(self, split, batch_size, max_examples):
        n = len(self.y[split]) if max_examples is None else min(max_examples, len(self.y[split]))
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            yield {"x": self.x[split][i:j], "y": self.y[split][i:j]}


class TinyTask:
    is_mup = False

    def __init__(self, name="tiny-w8", dim=8, classes=4):
        self.name = name
        self.dataset = TinyDataset(dim, classes)
        self.param_meta = {"w": ParamMeta("output", dim), "b": ParamMeta("vector", 1)}
        self.update_scales = update_scales(self.param_meta)
        self.dim, self.classes = dim, classes

    def init(self, key):
        return {"w": 0.1 * jax.random.normal(key, (self.dim, self.classes)), "b": jnp.zeros(self.classes)}

    def _logits(self, params, batch):
        return batch["x"] @ params["w"] + params["b"]

    def loss(self, params, batch, key):
        del key
        return optax.softmax_cross_entropy_with_integer_labels(self._logits(params, batch), batch["y"]).mean()

    def loss_and_accuracy(self, params, batch):
        logits = self._logits(params, batch)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return loss, (jnp.argmax(logits, -1) == batch["y"]).mean()


def settings(**kw):
    base = dict(num_steps=12, batch_size=16, steps_per_jit=5, test_interval=4, skip_test=False, eval_batch_size=100,
                max_eval_examples=250, progress=False)
    base.update(kw)
    return LoopSettings(**base)


def test_chunks_cover_steps_and_stop_at_evaluations():
    segs = list(_chunks(12, 5, {0, 4, 8, 12}))
    assert segs == [(0, 4), (4, 4), (8, 4)]
    segs = list(_chunks(11, 5, set()))
    assert segs == [(0, 5), (5, 5), (10, 1)]


def test_loop_logs_every_step_and_evaluates_on_schedule():
    task = TinyTask()
    loop = TrainLoop(task, adam(0.05), settings())
    records = []
    res = loop.run(0, lambda step, m: records.append((step, dict(m))))
    train_steps = [s for s, m in records if "train_loss" in m]
    assert train_steps == list(range(1, 13))
    test_steps = [s for s, m in records if "test_loss" in m]
    assert test_steps == [0, 4, 8, 12]
    assert len(res.train_losses) == 12 and not res.diverged and res.steps_completed == 12
    assert res.train_losses[-1] < res.train_losses[0]  # it learns
    assert 0.0 <= res.test_accuracy <= 1.0 and math.isfinite(res.test_loss)


def test_evaluation_is_weighted_mean_over_chunks():
    task = TinyTask()
    loop = TrainLoop(task, sgd(0.1), settings(eval_batch_size=100, max_eval_examples=250))
    params = task.init(jax.random.PRNGKey(3))
    loss, acc = loop.evaluate(params)
    full = {"x": task.dataset.x["test"][:250], "y": task.dataset.y["test"][:250]}
    ref_loss, ref_acc = task.loss_and_accuracy(params, full)
    assert loss == pytest.approx(float(ref_loss), rel=1e-5)
    assert acc == pytest.approx(float(ref_acc), abs=1e-6)


def test_same_seed_repeats_and_different_seeds_differ():
    task = TinyTask()
    loop = TrainLoop(task, adam(0.05), settings(skip_test=True))
    a, b, c = loop.run(0).train_losses, loop.run(0).train_losses, loop.run(1).train_losses
    assert a == b
    assert a != c
    # a fresh loop (another invocation) repeats too
    assert TrainLoop(task, adam(0.05), settings(skip_test=True)).run(1).train_losses == c


def test_divergence_stops_the_run_and_is_recorded():
    task = TinyTask()
    records = []
    res = TrainLoop(task, sgd(1e38), settings()).run(0, lambda s, m: records.append((s, dict(m))))
    assert res.diverged and res.diverged_step is not None and res.steps_completed == res.diverged_step < 12
    assert not math.isfinite(res.train_losses[-1])
    assert res.tail_mean(0.05) == math.inf
    assert res.test_loss is None and res.test_accuracy is None
    assert any(m.get("diverged") for _, m in records)


def test_cast_floats_keeps_integer_labels_exact():
    batch = {"x": np.ones((3, 2), np.float32), "y": np.array([999, 257, 65535], np.int32)}
    out = cast_floats(jax.tree.map(jnp.asarray, batch), jnp.bfloat16)
    assert out["x"].dtype == jnp.bfloat16
    assert out["y"].dtype == jnp.int32 and out["y"].tolist() == [999, 257, 65535]
    # the reference's bug: casting the labels to bf16 turns 999 into 1000
    assert int(jnp.asarray(999, jnp.bfloat16).astype(jnp.int32)) != 999


def test_bf16_loss_has_float32_grads_and_exact_labels():
    task = TinyTask(dim=8, classes=1000)
    params = task.init(jax.random.PRNGKey(0))
    seen = {}

    def spy_loss(p, batch, key):
        seen["w"], seen["y"] = p["w"].dtype, batch["y"]
        return task.loss(p, batch, key)

    batch = {"x": jnp.ones((2, 8)), "y": jnp.array([999, 300], jnp.int32)}
    loss, grads = jax.value_and_grad(bf16_loss(spy_loss))(params, batch, None)
    assert seen["w"] == jnp.bfloat16 and seen["y"].dtype == jnp.int32
    assert grads["w"].dtype == jnp.float32 and loss.dtype == jnp.float32
    assert float(loss) == pytest.approx(float(task.loss(params, batch, None)), rel=2e-2)


def test_bf16_run_keeps_float32_master_state():
    task = TinyTask()
    loop = TrainLoop(task, adam(0.05), settings(use_bf16=True))
    res = loop.run(0)
    assert not res.diverged and res.train_losses[-1] < res.train_losses[0]
    state = loop._opt_init(loop._init_params(jax.random.PRNGKey(0)))
    state, _ = loop._chunk(state, jax.random.PRNGKey(1), next(task.dataset.batches("train", (2, 4), 0)),
                           jnp.asarray(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating))


def test_tail_mean():
    assert tail_mean([4.0, 3.0, 2.0, 1.0], 0.5) == 1.5
    assert tail_mean([4.0, 3.0, 2.0, 1.0], 0.01) == 1.0
    assert tail_mean([], 0.5) == math.inf
