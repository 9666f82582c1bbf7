"""A flax nnx decoder-only transformer on Tiny Shakespeare (bytes) trained by the shipped μLO and by MuAdam.

    python examples/nnx_transformer_shakespeare.py --lo_impl reference  # the README's numbers (20 CPU-minutes)
    python examples/nnx_transformer_shakespeare.py --steps 2 --widths 32 --lo_impl reference  # a smoke run

An ordinary nnx model (pre-LN blocks: causal self-attention with heads of 16 dimensions, a 4x MLP; byte embedding,
a learned position embedding, a readout). The μP bits written into the model: attention logits q.k / d_head (not
/ sqrt(d_head)) and the readout multiplier 1/width; everything else (roles, fan_ins, the μP initialisation and the
update scales) comes from ``mulo.mup`` on the nnx state. Tiny Shakespeare ships with mulo (src/mulo/data/assets).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import arguments, compare  # noqa: E402

from mulo.data.text import BYTE_VOCAB_SIZE, TinyShakespeare  # noqa: E402

D_HEAD, DEPTH, SEQ = 16, 2, 64


class Block(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.ln1, self.ln2 = nnx.LayerNorm(width, rngs=rngs), nnx.LayerNorm(width, rngs=rngs)
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.proj = nnx.Linear(width, width, rngs=rngs)
        self.up, self.down = nnx.Linear(width, 4 * width, rngs=rngs), nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, h):
        b, t, d = h.shape
        q, k, v = jnp.split(self.qkv(self.ln1(h)).reshape(b, t, 3, d // D_HEAD, D_HEAD), 3, axis=2)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q[:, :, 0], k[:, :, 0]) / D_HEAD  # μP: 1/d_head
        logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -1e30)
        mixed = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v[:, :, 0]).reshape(b, t, d)
        h = h + self.proj(mixed)
        return h + self.down(nnx.gelu(self.up(self.ln2(h))))


class LM(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.embed = nnx.Embed(BYTE_VOCAB_SIZE, width, rngs=rngs)
        self.pos = nnx.Param(jnp.zeros((SEQ, width)))
        self.blocks = nnx.List([Block(width, rngs) for _ in range(DEPTH)])
        self.ln = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, BYTE_VOCAB_SIZE, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens) + self.pos[: tokens.shape[-1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h)) / h.shape[-1]  # the μP readout multiplier: mulo.mup.readout_multiplier(meta)


def width_of(state) -> int:
    return jax.tree.leaves(state["head"]["kernel"])[0].shape[0]


def model():
    graphs = {}  # width -> the nnx graph definition that merges with a state of that width

    def init_fn(width):
        graph, state = nnx.split(LM(width, nnx.Rngs(0)))
        graphs[width_of(state)] = graph
        return state

    def loss_fn(state, batch):
        logits = nnx.merge(graphs[width_of(state)], state)(batch["x"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        mask = batch["y"] != 0  # pad
        return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1)

    return init_fn, loss_fn, ()


def main() -> None:
    args = arguments(__doc__, widths="64,256", steps=300, batch=16, lrs="0.3,0.1,0.03,0.01,0.003")
    data = TinyShakespeare("tinyshakespeare", SEQ)
    test = list(data.eval_batches("test", 64, max_examples=256))

    def evaluate(loss_fn, state):
        loss = float(np.mean([loss_fn(state, b) for b in test]))
        return {"test_loss": round(loss, 4), "test_bits_per_byte": round(loss / np.log(2), 4)}

    compare(args, model(), lambda seed: data.batches("train", (args.batch,), seed), evaluate)


if __name__ == "__main__":
    main()
