"""Decoder-only pre-LN transformer language models: ``mutransformer`` (muP) and ``transformer`` (SP).

Structure (reference §2.3): token embedding ``embed_in`` (no position embedding, as the reference: the causal mask
alone carries order), then ``depth`` blocks of

    h = h + dropout(attn(LN_1(h)))        # q, k, v, out projections d -> d, heads = d / d_head, causal mask
    h = h + dropout(mlp(LN_2(h)))         # d -> 4d, GELU, 4d -> d

then a final LayerNorm ``h_f`` and the readout ``linear_out``. Dropout 0.1 in train mode only (the reference also
dropped out at evaluation, a bug). The loss is the mean token cross-entropy over non-pad targets (pad id 0); pad
inputs are also masked out as attention keys.

muP (``mutransformer``): embedding N(0, 1/vocab) (fan_in = vocab) times ``input_mult``; every q/k/v/out/MLP weight
N(0, 1/fan_in) (``linear_1``: fan_in 4d), every bias N(0, 1), LayerNorms scale 1 / offset 0; attention logits
q.k / d_head; readout zero weight, N(0, 1) bias, output times ``output_mult / d`` (bias included). Update scales:
hidden_lr_mult / fan_in for the q/k/v/out and MLP weights, 1 for the embedding, readout, biases and LayerNorms.

SP (``transformer``): haiku defaults (embedding truncated normal std 1, Linear truncated normal 1/sqrt(fan_in), zero
biases, default readout), attention q.k / sqrt(d_head), no multipliers, update scales 1.

Normaliser: clip(loss, 0, 1.5 ln V) with NaN/inf -> the max, the MLP rule with the vocabulary size as the class
count (the reference used the identity; a clip keeps one diverging inner run from dominating the meta-loss).
"""

from __future__ import annotations

import math
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from mulo.errors import TaskError
from mulo.tasks.common import HaikuTask, token_loss
from mulo.tasks.names import TaskSpec

DROPOUT_RATE = 0.1
PAD_ID = 0


class CausalSelfAttention(hk.Module):
    def __init__(self, num_heads: int, d_head: int, mup: bool, name: str):
        super().__init__(name=name)
        self.num_heads, self.d_head, self.mup = num_heads, d_head, mup

    @hk.transparent
    def _linear(self, size: int, name: str) -> hk.Linear:
        if self.mup:
            return hk.Linear(size, w_init=hk.initializers.VarianceScaling(1.0, "fan_in", "normal"),
                             b_init=hk.initializers.RandomNormal(stddev=1.0), name=name)
        return hk.Linear(size, name=name)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        *lead, t, d = x.shape
        heads = lambda name: self._linear(self.num_heads * self.d_head, name)(x).reshape(
            *lead, t, self.num_heads, self.d_head)
        q, k, v = heads("query"), heads("key"), heads("value")
        logits = jnp.einsum("...thd,...Thd->...htT", q, k)
        logits = logits / (self.d_head if self.mup else math.sqrt(self.d_head))
        mask = jnp.asarray(np.tril(np.ones((t, t), bool)))
        if key_mask is not None:
            mask = mask & key_mask[..., None, None, :]
        logits = jnp.where(mask, logits, -1e30)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("...htT,...Thd->...thd", weights, v).reshape(*lead, t, self.num_heads * self.d_head)
        return self._linear(d, "linear")(out)


class DenseBlock(hk.Module):
    def __init__(self, mup: bool, name: str, widening: int = 4):
        super().__init__(name=name)
        self.mup, self.widening = mup, widening

    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        if self.mup:
            kw = dict(w_init=hk.initializers.VarianceScaling(1.0, "fan_in", "normal"),
                      b_init=hk.initializers.RandomNormal(stddev=1.0))
        else:
            kw = {}
        h = hk.Linear(self.widening * d, name="linear", **kw)(x)
        h = jax.nn.gelu(h)
        return hk.Linear(d, name="linear_1", **kw)(h)


class Transformer(hk.Module):
    def __init__(self, width: int, depth: int, vocab_size: int, d_head: int, mup: bool, input_mult: float = 1.0,
                 output_mult: float = 1.0, dropout_rate: float = DROPOUT_RATE, name: str = "transformer"):
        super().__init__(name=name)
        self.width, self.depth, self.vocab_size, self.d_head = width, depth, vocab_size, d_head
        self.mup, self.input_mult, self.output_mult, self.dropout_rate = mup, input_mult, output_mult, dropout_rate

    def __call__(self, tokens: jax.Array, is_training: bool):
        acts = {}
        rate = self.dropout_rate if is_training else 0.0
        drop = (lambda y: hk.dropout(hk.next_rng_key(), rate, y)) if rate > 0 else (lambda y: y)
        key_mask = tokens != PAD_ID
        if self.mup:
            embed = hk.Embed(self.vocab_size, self.width, name="embed_in",
                             w_init=hk.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.vocab_size)))
        else:
            embed = hk.Embed(self.vocab_size, self.width, name="embed_in")
        h = embed(tokens)
        if self.mup and self.input_mult != 1.0:
            h = h * self.input_mult
        acts["embed"] = h
        layer_norm = lambda name: hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, name=name)
        for i in range(self.depth):
            a = CausalSelfAttention(self.width // self.d_head, self.d_head, self.mup, name=f"h{i}_attn")(
                layer_norm(f"h{i}_ln_1")(h), key_mask)
            acts[f"h{i}_attn"] = a
            h = h + drop(a)
            m = DenseBlock(self.mup, name=f"h{i}_mlp")(layer_norm(f"h{i}_ln_2")(h))
            acts[f"h{i}_mlp"] = m
            h = h + drop(m)
            acts[f"h{i}_out"] = h
        h = layer_norm("h_f")(h)
        if self.mup:
            logits = hk.Linear(self.vocab_size, w_init=jnp.zeros, b_init=hk.initializers.RandomNormal(stddev=1.0),
                               name="linear_out")(h) * (self.output_mult / self.width)
        else:
            logits = hk.Linear(self.vocab_size, name="linear_out")(h)
        acts["logits"] = logits
        return logits, acts


def transformer_role(module: str, name: str, shape: tuple[int, ...]) -> str:
    leaf_module = module.rsplit("/", 1)[-1]
    if leaf_module == "embed_in":
        return "input"
    if name != "w":
        return "vector"  # biases, LayerNorm scale/offset
    return "output" if leaf_module == "linear_out" else "hidden"


class TransformerTask(HaikuTask):
    """``mutransformer-w{W}-d{D}_{text dataset}`` and ``transformer-...``; heads = W / d_head."""

    def __init__(self, spec: TaskSpec, settings: Any, dataset: Any):
        self.vocab_size = int(dataset.vocab_size)
        self.seq_len = dataset.seq_len
        self.d_head = int(settings.d_head)
        self.num_heads = spec.width // self.d_head
        mup = spec.is_mup

        def forward(tokens, is_training):
            return Transformer(spec.width, spec.depth, self.vocab_size, self.d_head, mup,
                               input_mult=settings.input_mult if mup else 1.0,
                               output_mult=settings.output_mult if mup else 1.0)(tokens, is_training)

        super().__init__(spec, settings, dataset, forward, role_fn=transformer_role,
                         loss_fn=lambda logits, y: token_loss(logits, y, PAD_ID),
                         normalizer_max=1.5 * math.log(self.vocab_size))


def check_width(spec: TaskSpec, d_head: int) -> None:
    """A transformer's width is a whole number of heads of ``d_head``."""
    if spec.width % d_head:
        raise TaskError(f"bad width {spec.width} in task name {spec.name!r}: a transformer's width must be a multiple "
                        f"of d_head={d_head} (heads = width / d_head)")


def _register() -> None:
    from mulo.registry import TaskFamily, register_task_family

    register_task_family(TaskFamily(name="transformer", models={"mutransformer": True, "transformer": False},
                                    dataset_kind="text", build=TransformerTask, check=check_width,
                                    plural="transformers",
                                    help="pre-LN decoder-only LM: depth blocks, heads of d_head dims, MLP 4x width"))


_register()
