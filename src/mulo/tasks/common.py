"""What every mulo task shares: a haiku model, its muP metadata, losses and the normaliser.

A model is a haiku function ``forward(x, is_training) -> (logits, activations)`` (activations: name -> array, for
coordinate checks). Its parameters' muP metadata comes from the shapes alone (``jax.eval_shape``, no init): a
per-family ``role_fn(module, name, shape) -> role`` picks the role, and fan_in is ``shape[0]`` for matrices
(embeddings: the vocabulary size, as the reference) and 1 for vectors. ``update_scales`` then derive from the
metadata in one place (``mulo.tasks.base.update_scales``); SP tasks get 1.0 everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mulo.tasks.base import ParamMeta, update_scales
from mulo.tasks.names import TaskSpec

RoleFn = Callable[[str, str, tuple[int, ...]], str]


def build_param_meta(param_shapes: Any, role_fn: RoleFn) -> dict:
    """``{module: {name: ParamMeta}}`` with the structure of the params."""
    meta = {}
    for module, leaves in param_shapes.items():
        meta[module] = {}
        for name, leaf in leaves.items():
            shape = tuple(leaf.shape)
            role = role_fn(module, name, shape)
            fan_in = int(shape[0]) if role != "vector" and len(shape) >= 2 else 1
            meta[module][name] = ParamMeta(role=role, fan_in=fan_in)
    return meta


def clip_normalizer(loss: jax.Array, max_value: float) -> jax.Array:
    """Clip to [0, max_value]; NaN and +-inf become max_value (the reference's MLP normaliser)."""
    loss = jnp.asarray(loss)
    return jnp.where(jnp.isfinite(loss), jnp.clip(loss, 0.0, max_value), max_value)


def classification_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and accuracy over all leading axes."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    acc = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.mean(ce), jnp.mean(acc)


def token_loss(logits: jax.Array, targets: jax.Array, pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy over non-pad target tokens."""
    mask = (targets != pad_id).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    acc = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.sum(ce * mask) / denom, jnp.sum(acc * mask) / denom


class HaikuTask:
    """A task built from a haiku forward function, a dataset and a role function (see the module docstring).

    Implements ``mulo.tasks.base.Task``. Construction is cheap: shapes come from ``jax.eval_shape``; no data is read
    until ``dataset.batches`` is called.
    """

    def __init__(self, spec: TaskSpec, settings: Any, dataset: Any, forward: Callable, role_fn: RoleFn,
                 loss_fn: Callable, normalizer_max: float):
        self.spec = spec
        self.name = spec.name
        self.is_mup = spec.is_mup
        self.settings = settings
        self.dataset = dataset
        self._loss_fn = loss_fn
        self._normalizer_max = float(normalizer_max)
        self._net = hk.transform(forward)
        self._init = jax.jit(lambda key: self._net.init(key, self._dummy_x(), False))
        spec_x = self.batch_spec()["x"]
        x = jax.ShapeDtypeStruct((1,) + spec_x.shape, spec_x.dtype)
        self.param_shapes = jax.eval_shape(lambda k, xx: self._net.init(k, xx, False), jax.random.key(0), x)
        self.param_meta = build_param_meta(self.param_shapes, role_fn)
        if self.is_mup:
            self.update_scales = update_scales(self.param_meta, settings.hidden_lr_mult)
        else:
            self.update_scales = jax.tree.map(lambda _: 1.0, self.param_meta,
                                              is_leaf=lambda m: isinstance(m, ParamMeta))

    # ---- shapes
    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Per-example shapes and dtypes of a batch (no leading axes): ``{"x": ..., "y": ...}``."""
        return {k: jax.ShapeDtypeStruct(shape, np.dtype(dtype))
                for k, (shape, dtype) in self.dataset.example_spec().items()}

    def example_batch(self, batch_shape: tuple[int, ...] = (1,)) -> dict[str, np.ndarray]:
        """A dummy batch (zeros; text inputs are token 1 so nothing is padding) with leading shape ``batch_shape``."""
        out = {}
        for k, s in self.batch_spec().items():
            fill = 1 if np.issubdtype(s.dtype, np.integer) and s.shape else 0
            out[k] = np.full(tuple(batch_shape) + s.shape, fill, s.dtype)
        return out

    @property
    def num_params(self) -> int:
        return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(self.param_shapes)))

    # ---- Task protocol
    def _dummy_x(self) -> jax.Array:
        spec_x = self.batch_spec()["x"]
        return jnp.zeros((1,) + spec_x.shape, spec_x.dtype)

    def init(self, key: jax.Array):
        """Fresh parameters (jitted; fine inside jit/vmap too)."""
        return self._init(key)

    def logits(self, params, batch, key: jax.Array | None = None, is_training: bool = False) -> jax.Array:
        return self._net.apply(params, key, batch["x"], is_training)[0]

    def loss(self, params, batch, key: jax.Array | None = None) -> jax.Array:
        """Mean training loss (train mode: dropout on where the model has it; then ``key`` is required)."""
        logits, _ = self._net.apply(params, key, batch["x"], True)
        return self._loss_fn(logits, batch["y"])[0]

    def loss_and_accuracy(self, params, batch) -> tuple[jax.Array, jax.Array]:
        logits, _ = self._net.apply(params, None, batch["x"], False)
        return self._loss_fn(logits, batch["y"])

    def activations(self, params, batch) -> dict[str, jax.Array]:
        return self._net.apply(params, None, batch["x"], False)[1]

    def normalizer(self, loss: jax.Array) -> jax.Array:
        return clip_normalizer(loss, self._normalizer_max)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, params={self.num_params:,}, is_mup={self.is_mup})"
