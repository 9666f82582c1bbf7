"""A flax linen CNN on Fashion-MNIST trained by the shipped μLO and by MuAdam, at widths 64 and 1024.

    python examples/flax_cnn_fashionmnist.py               # the README's numbers (15 minutes on a shared 2-core CPU)
    python examples/flax_cnn_fashionmnist.py --steps 2 --widths 32 --lo_impl reference  # a smoke run (as the test)

The model is ordinary flax: two stride-2 3x3 convolutions of width/8 channels, a global average pool, two Dense
layers of ``width`` units and a 10-way readout. The μP bits: ``mulo.mup`` infers every parameter's role and fan_in
from the init at two widths, re-initialises the params (N(0, 1/fan_in), zero readout) and gives the update scales;
the one thing written into the model is the readout multiplier 1/width (``mup.readout_multiplier(meta)``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import arguments, compare  # noqa: E402

from mulo.data.images import ImageDataset  # noqa: E402


class CNN(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        channels = self.width // 8
        h = nn.relu(nn.Conv(channels, (3, 3), strides=2)(x))
        h = nn.relu(nn.Conv(channels, (3, 3), strides=2)(h))
        h = h.mean(axis=(1, 2))
        h = nn.relu(nn.Dense(self.width)(h))
        h = nn.relu(nn.Dense(self.width)(h))
        return nn.Dense(10)(h) / self.width  # the μP readout multiplier: mulo.mup.readout_multiplier(meta)


def model():
    x = jnp.zeros((1, 28, 28, 1))
    init_fn = lambda width: CNN(width).init(jax.random.key(0), x)["params"]

    def loss_fn(params, batch):
        logits = CNN(params["Dense_0"]["kernel"].shape[1]).apply({"params": params}, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    return init_fn, loss_fn, ()


def main() -> None:
    args = arguments(__doc__, widths="64,1024", steps=400, batch=128, lrs="1,0.3,0.1,0.03,0.01")
    data = ImageDataset("fashionmnist-28x28x1")
    test = list(data.eval_batches("test", 500, max_examples=2000))

    def evaluate(loss_fn, params):
        width = params["Dense_0"]["kernel"].shape[1]
        logits = np.concatenate([np.asarray(CNN(width).apply({"params": params}, b["x"])) for b in test])
        labels = np.concatenate([b["y"] for b in test])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return {"test_loss": round(float(loss), 4), "test_accuracy": round(float(np.mean(logits.argmax(-1) == labels)),
                                                                          4)}

    compare(args, model(), lambda seed: data.batches("train", (args.batch,), seed), evaluate)


if __name__ == "__main__":
    main()
