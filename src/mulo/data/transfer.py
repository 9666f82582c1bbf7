"""How a dataset's batches travel to the device: compact when the dataset can decode them there.

An image dataset keeps uint8 images on the host; normalising them there makes a float32 batch four times larger to
copy to the accelerator and costs the host a pass over every value. A dataset with a ``decode(batch)`` method (pure
jnp) instead yields its compact form from ``batches(..., encoded=True)`` and ``decode`` turns it, on the device that
holds it, into exactly the batch the tasks expect (the same float32 values). Datasets without one (text: token ids
are already compact) are sent as they are.

    kwargs, decode = host_kwargs(dataset), device_decoder(dataset)
    batch = decode(jax.device_put(next(dataset.batches("train", (B,), seed, **kwargs))))
"""

from __future__ import annotations

from typing import Any, Callable

import jax


def encodes(dataset: Any) -> bool:
    """Whether ``dataset`` sends a compact form and decodes it on the device."""
    return callable(getattr(dataset, "decode", None))


def host_kwargs(dataset: Any) -> dict:
    """The extra arguments of ``dataset.batches`` for the compact form ({} when it has none)."""
    return {"encoded": True} if encodes(dataset) else {}


def device_decoder(dataset: Any, by_split: bool = False) -> Callable[[Any], Any]:
    """A jitted function from what ``batches(**host_kwargs(dataset))`` yields (placed on devices) to the tasks'
    batch, keeping its sharding; ``by_split``: for a dict {split: batch}. The identity for a dataset without
    ``decode``."""
    if not encodes(dataset):
        return lambda batch: batch
    if by_split:
        return jax.jit(lambda chunk: {split: dataset.decode(b) for split, b in chunk.items()})
    return jax.jit(dataset.decode)
