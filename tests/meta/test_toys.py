"""Tiny test-only task and learned optimizer implementing mulo's Task / LearnedOptimizer interfaces, for the
meta-training tests (tests/meta/test_*.py). Also importable by subprocesses (the SIGTERM test)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mulo.meta.train import train
from mulo.optimizers.base import Optimizer
from mulo.tasks.base import ParamMeta, update_scales

# the meta-training settings of the toy runs (tests/meta/test_train.py, tests/meta/test_mixture.py): few, short steps
TOY_META_CONFIG = dict(trunc_length=4, steps_per_jit=2, num_inner_steps=9, truncation_schedule_min_length=3,
                       random_initial_iteration_offset=3, local_batch_size=4, save_iter=2, checkpoints_to_keep=2,
                       progress=False, meta_grad_clip=1.0,
                       schedule=dict(init_value=1e-4, peak_value=2e-2, warmup_steps=2, decay_steps=8, end_value=1e-3,
                                     exponent=1.0))


def train_flat(cfg, tasks, lo, run_dir, **kwargs):
    """``mulo.meta.train.train`` from a flat config (its settings, estimator and truncation), logging metrics.jsonl
    as the meta-train command does."""
    from pathlib import Path

    from mulo.app.runlog import RunLogger
    from mulo.app.sections import build
    from mulo.meta.settings import TrainSettings

    settings, estimator = TrainSettings.from_config(cfg), build(cfg, "estimator")
    truncation = build(cfg, "truncation", cfg.num_inner_steps)

    def logger():
        return RunLogger(Path(run_dir), cfg, group="meta-train", name=Path(run_dir).name, job_type="meta-train")

    return train(settings, tasks, lo, estimator, truncation, run_dir, make_logger=logger, **kwargs)


class ToyDataset:
    """Gaussian targets x of shape (..., dim) with std ``noise``; y zeros. A pure function of (split, shape, seed)."""

    def __init__(self, dim: int, noise: float):
        self.name = "toy"
        self.dim = dim
        self.noise = noise

    def batches(self, split, shape, seed):
        rng = np.random.default_rng([seed, {"train": 0, "meta_valid": 1, "test": 2}[split]])
        while True:
            x = (self.noise * rng.standard_normal(tuple(shape) + (self.dim,))).astype(np.float32)
            yield {"x": x, "y": np.zeros(tuple(shape), np.int32)}

    def eval_batches(self, split, batch_size, max_examples=None):
        yield from ()


class QuadraticTask:
    """loss(w) = mean_b ½ Σ_j h_j (w_j − x_bj)² + ½ Σ_jk (v_jk − x̄_j)², params {"lin": {"w": (d,)}, "mat": {"v": (d, d)}}.

    ``init_noise`` = 0 makes the initial params deterministic (w = v = 1)."""

    is_mup = False

    def __init__(self, dim: int = 3, noise: float = 0.0, init_noise: float = 0.0, name: str = "quad"):
        self.name = name
        self.dim = dim
        self.init_noise = init_noise
        self.curv = jnp.linspace(0.5, 2.0, dim)
        self.dataset = ToyDataset(dim, noise)
        self.param_meta = {"lin": {"w": ParamMeta("vector", 1)}, "mat": {"v": ParamMeta("hidden", dim)}}
        self.update_scales = update_scales(self.param_meta)

    def init(self, key):
        k1, k2 = jax.random.split(key)
        d = self.dim
        return {"lin": {"w": jnp.ones((d,)) + self.init_noise * jax.random.normal(k1, (d,))},
                "mat": {"v": jnp.ones((d, d)) + self.init_noise * jax.random.normal(k2, (d, d))}}

    def loss(self, params, batch, key):
        del key
        x = batch["x"]
        lw = 0.5 * jnp.mean(jnp.sum(self.curv * (params["lin"]["w"] - x) ** 2, axis=-1))
        lv = 0.5 * jnp.sum((params["mat"]["v"] - jnp.mean(x, axis=0)[None, :]) ** 2)
        return lw + lv

    def loss_and_accuracy(self, params, batch):
        return self.loss(params, batch, None), jnp.zeros(())

    def normalizer(self, loss):
        return jnp.clip(jnp.nan_to_num(loss, nan=100.0, posinf=100.0), 0.0, 100.0)

    def activations(self, params, batch):
        return {}


@dataclass(frozen=True)
class ToyHParams:
    base_lr: float = 0.1

    def to_dict(self):
        return {"base_lr": self.base_lr}


class ToyState(NamedTuple):
    params: dict
    iteration: jnp.ndarray
    num_steps: jnp.ndarray


class ToyLO:
    """θ = {"log_lr": scalar, "bias": (2,)}: p ← p − exp(log_lr)·s·g − 0.05·bias[role] (bias[0] vectors, [1] matrices)."""

    name = "toy_lo"

    def __init__(self, base_lr: float = 0.1):
        self.hparams = ToyHParams(base_lr)

    def init_theta(self, key):
        del key
        return {"log_lr": jnp.asarray(math.log(self.hparams.base_lr), jnp.float32), "bias": jnp.zeros((2,))}

    def opt_fn(self, theta, scales):
        def init(params, num_steps):
            return ToyState(params, jnp.zeros((), jnp.int32), jnp.asarray(num_steps, jnp.int32))

        def update(state, grads, loss, key):
            lr = jnp.exp(theta["log_lr"])
            shift = {"lin": {"w": theta["bias"][0]}, "mat": {"v": theta["bias"][1]}}
            new = jax.tree.map(lambda p, g, s, b: p - lr * s * g - 0.05 * b, state.params, grads, scales, shift)
            return ToyState(new, state.iteration + 1, state.num_steps)

        return Optimizer(init=init, update=update, params=lambda s: s.params)


def test_toy_task_gradient_matches_hand_computation():
    task = QuadraticTask(dim=2)
    params = task.init(jax.random.PRNGKey(0))
    batch = {"x": jnp.zeros((4, 2)), "y": jnp.zeros((4,), jnp.int32)}
    g = jax.grad(task.loss)(params, batch, None)
    np.testing.assert_allclose(g["lin"]["w"], task.curv * 1.0, rtol=1e-6)
    np.testing.assert_allclose(g["mat"]["v"], np.ones((2, 2)), rtol=1e-6)
