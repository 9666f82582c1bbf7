"""The task interface and muP metadata.

muP is *static metadata* of a task's parameters: every parameter has a role and a fan_in, and every per-parameter
scale (init variance, forward multipliers, optimizer update scale) derives from them in one place. Nothing muP-related
travels through model state (the reference smuggled its scales through haiku state, §9.14).

Batches are dicts of arrays: ``{"x": inputs, "y": int32 targets}``; images are float32 NHWC, text ``x`` and ``y`` are
int32 token ids of shape (..., seq) with pad id 0 (masked out of the loss). Leading axes are free: a meta-training
batch has shape (steps_per_jit, num_tasks, batch, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol

import jax

Params = Any  # a haiku params dict {module: {name: array}}
Batch = Mapping[str, jax.Array]

ROLES = ("input", "hidden", "output", "vector")


@dataclass(frozen=True)
class ParamMeta:
    """muP metadata of one parameter tensor.

    role: ``input`` (input-layer weights, embeddings), ``hidden`` (hidden matrices: both dimensions scale with width),
    ``output`` (readout weights) or ``vector`` (biases, LayerNorm scales/offsets: one dimension at most scales).
    fan_in: the tensor's input dimension (1 for vectors).
    """

    role: str
    fan_in: int

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"bad muP role {self.role!r}; expected one of {ROLES}")
        if self.fan_in < 1:
            raise ValueError(f"fan_in must be >= 1, got {self.fan_in}")


@dataclass(frozen=True)
class MupMultipliers:
    """The three muP knobs of the reference (all 1 by default, as when meta-training in the paper)."""

    input_mult: float = 1.0
    output_mult: float = 1.0
    hidden_lr_mult: float = 1.0


def update_scale(meta: ParamMeta, hidden_lr_mult: float = 1.0) -> float:
    """The muP scale of an Adam-like (or LO) update: hidden_lr_mult / fan_in for hidden matrices, 1 otherwise."""
    return hidden_lr_mult / meta.fan_in if meta.role == "hidden" else 1.0


def update_scales(param_meta: Any, hidden_lr_mult: float = 1.0) -> Any:
    """Pytree of Python floats with the structure of ``param_meta`` (and so of the params)."""
    return jax.tree.map(lambda m: update_scale(m, hidden_lr_mult), param_meta,
                        is_leaf=lambda x: isinstance(x, ParamMeta))


def init_std(meta: ParamMeta) -> float | None:
    """The muP initial standard deviation of a weight: sqrt(1 / fan_in) for input and hidden weights, 0 for the
    readout (zero-initialised), None for vectors (biases and norms keep their own initialisation)."""
    if meta.role == "vector":
        return None
    return 0.0 if meta.role == "output" else (1.0 / meta.fan_in) ** 0.5


def readout_multiplier(meta: ParamMeta, output_mult: float = 1.0) -> float:
    """The muP forward multiplier of a readout's output: ``output_mult / fan_in`` (mulo's tasks multiply their logits,
    readout bias included, by it). Only a readout has one."""
    if meta.role != "output":
        raise ValueError(f"only a readout (role 'output') has a forward multiplier, not a {meta.role!r} tensor")
    return output_mult / meta.fan_in


class Dataset(Protocol):
    """A dataset with splits ``train``, ``meta_valid`` and ``test`` (train and meta_valid never overlap)."""

    name: str

    def batches(self, split: str, shape: tuple[int, ...], seed: int) -> Iterator[dict]:
        """Endless host (numpy) batches with leading shape ``shape`` (e.g. (S, N, B)), reproducible from ``seed``."""

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None) -> Iterator[dict]:
        """Finite, sequential batches over (the first ``max_examples`` of) a split, for evaluation."""


class Task(Protocol):
    """What optimizers are meta-trained and tested on."""

    name: str
    is_mup: bool
    param_meta: Any  # pytree of ParamMeta, structure of params
    update_scales: Any  # pytree of float, structure of params; all 1.0 for SP tasks
    dataset: Dataset

    def init(self, key: jax.Array) -> Params: ...

    def loss(self, params: Params, batch: Batch, key: jax.Array) -> jax.Array:
        """Mean training loss (train mode: dropout on, if any)."""

    def loss_and_accuracy(self, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """Mean loss and accuracy in eval mode (no dropout)."""

    def normalizer(self, loss: jax.Array) -> jax.Array:
        """Meta-training loss normaliser (e.g. clip to [0, 1.5 ln C], NaN -> max)."""

    def activations(self, params: Params, batch: Batch) -> dict[str, jax.Array]:
        """Per-layer outputs (name -> array) for coordinate checks, in eval mode."""

    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Per-example shapes/dtypes of a batch, without leading axes: ``{"x": ..., "y": ...}``."""

    def example_batch(self, batch_shape: tuple[int, ...] = (1,)) -> dict:
        """A dummy numpy batch with leading shape ``batch_shape`` (text inputs hold a non-pad token)."""


TaskFactory = Callable[..., Task]
