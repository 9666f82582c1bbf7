"""MLP image classifiers: ``mumlp`` (muP, Tensor Programs V table 8, as the reference's MuMLP) and ``mlp`` (SP).

Layers ``linear_0`` ... ``linear_{depth}``: ``depth`` hidden layers of ``width`` units, then the readout; the input
is flattened and ReLU follows every layer but the last.

muP (``mumlp``), per layer:

=================  =======================================  =======  ==================================  =========
layer              w init                                   b init   forward                             update
=================  =======================================  =======  ==================================  =========
linear_0 (input)   trunc. normal(+-2) std sqrt(1/fan_in) *  N(0, 1)  out * input_mult                    1
linear_i (hidden)  same                                     N(0, 1)  out                                 m/fan_in
readout            zeros                                    N(0, 1)  out * output_mult / fan_in (bias    1
                                                                     included)
=================  =======================================  =======  ==================================  =========

\\* no variance correction for the truncation (the actual std is about 0.88 sqrt(1/fan_in)), as the reference;
m = hidden_lr_mult; biases have update scale 1.

SP (``mlp``): haiku defaults (truncated normal std 1/sqrt(fan_in), zero biases), no multipliers, scale 1.

Normaliser: clip(loss, 0, 1.5 ln C) with NaN/inf -> the max (the reference's).
"""

from __future__ import annotations

import math
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from mulo.tasks.common import HaikuTask, classification_loss
from mulo.tasks.names import TaskSpec


def make_mlp_forward(width: int, depth: int, num_classes: int, mup: bool, input_mult: float = 1.0,
                     output_mult: float = 1.0):
    sizes = [width] * depth + [num_classes]

    def forward(x: jax.Array, is_training: bool):
        del is_training  # no dropout
        h = jnp.reshape(x, x.shape[:-3] + (-1,))  # keep the input dtype (bf16 runs cast it down)
        acts = {}
        for i, size in enumerate(sizes):
            fan_in = h.shape[-1]
            last = i == len(sizes) - 1
            name = f"linear_{i}"
            if mup:
                w_init = jnp.zeros if last else hk.initializers.TruncatedNormal(stddev=math.sqrt(1.0 / fan_in))
                layer = hk.Linear(size, w_init=w_init, b_init=hk.initializers.RandomNormal(stddev=1.0), name=name)
            else:
                layer = hk.Linear(size, name=name)
            h = layer(h)
            if mup and i == 0 and input_mult != 1.0:
                h = h * input_mult
            if mup and last:
                h = h * (output_mult / fan_in)
            acts[name if not last else "logits"] = h
            if not last:
                h = jax.nn.relu(h)
        return h, acts

    return forward


def mlp_role(module: str, name: str, shape: tuple[int, ...], num_layers: int) -> str:
    if name != "w":
        return "vector"
    index = int(module.rsplit("_", 1)[1])
    if index == 0:
        return "input"
    return "output" if index == num_layers - 1 else "hidden"


class MLPTask(HaikuTask):
    """``mumlp-w{W}-d{D}_{image dataset}`` and ``mlp-...``."""

    def __init__(self, spec: TaskSpec, settings: Any, dataset: Any):
        self.num_classes = dataset.num_classes
        mup = spec.is_mup
        forward = make_mlp_forward(spec.width, spec.depth, self.num_classes, mup,
                                   input_mult=settings.input_mult if mup else 1.0,
                                   output_mult=settings.output_mult if mup else 1.0)
        num_layers = spec.depth + 1
        super().__init__(spec, settings, dataset, forward,
                         role_fn=lambda m, n, s: mlp_role(m, n, s, num_layers),
                         loss_fn=classification_loss,
                         normalizer_max=1.5 * math.log(self.num_classes))


def _register() -> None:
    from mulo.registry import TaskFamily, register_task_family

    register_task_family(TaskFamily(name="mlp", models={"mumlp": True, "mlp": False}, dataset_kind="image",
                                    build=MLPTask, plural="MLPs",
                                    help="MLP classifier: depth hidden layers of width ReLU units, then the readout"))


_register()
