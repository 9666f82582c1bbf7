"""How a dataset's batches travel to the device: compact, and finished there.

An image dataset keeps uint8 images on the host; normalising them there makes a float32 batch four times larger to
copy to the accelerator and costs the host a pass over every value. A dataset with a ``decode`` method (pure jnp)
instead yields a compact form from ``batches(..., form=...)`` that ``decode`` turns, on the device that holds it,
into exactly the batch the tasks expect (the same float32 values):

* ``"uint8"``: the gathered images; the host still gathers every image.
* ``"index"`` (*resident* data, config key ``data_on_device``): the split's images are placed on the device once
  (replicated on every device that trains), batches carry only int32 indices and ``decode`` gathers there. On an
  accelerator this removes the host's per-image work and the bus traffic, the two things a large-batch run waits for.

Datasets without ``decode`` (text: token ids are already compact) are sent as they are.

    resident = wants_resident(cfg.data_on_device, dataset, devices)
    stream = dataset.batches("train", (B,), seed, **host_kwargs(dataset, resident))
    decode = device_decoder(dataset, resident_images(dataset, ["train"], put) if resident else None)
    batch = decode(put(next(stream)))
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

from mulo.registry import ON_DEVICE_MODES

RESIDENT_FRACTION = 0.25  # auto: at most this fraction of the smallest device's memory for the resident splits


def encodes(dataset: Any) -> bool:
    """Whether ``dataset`` sends a compact form and decodes it on the device."""
    return callable(getattr(dataset, "decode", None))


def wants_resident(setting: str, dataset: Any, devices: Sequence[jax.Device], splits: Sequence[str] = ("train",)
                   ) -> bool:
    """Whether ``dataset``'s ``splits`` are kept on ``devices`` (``data_on_device``): "on" for any dataset that can
    (image datasets), "off" never, "auto" on accelerators (not the CPU, where the device is the host) when the
    splits' uint8 images fit in ``RESIDENT_FRACTION`` of the smallest device's memory."""
    if setting not in ON_DEVICE_MODES:
        raise ValueError(f"data_on_device must be one of {ON_DEVICE_MODES}, got {setting!r}")
    if setting == "off" or not callable(getattr(dataset, "resident_images", None)):
        return False
    if setting == "on":
        return True
    devices = list(devices)
    if not devices or any(d.platform == "cpu" for d in devices):
        return False
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    if any(not limit for limit in limits):
        return False
    need = sum(dataset.resident_images(sp).nbytes for sp in splits)
    return need <= RESIDENT_FRACTION * min(limits)


def host_kwargs(dataset: Any, resident: bool = False) -> dict:
    """The extra arguments of ``dataset.batches`` for its compact form ({} when it has none)."""
    if not encodes(dataset):
        return {}
    return {"form": "index" if resident else "uint8"}


def resident_images(dataset: Any, splits: Sequence[str], put: Callable[[Any], Any]) -> dict:
    """{split: the split's uint8 images placed by ``put``} for ``form="index"`` batches (placement is the caller's:
    ``mulo.parallel`` replicates them over the mesh; one device gets ``jax.device_put``)."""
    return {sp: put(dataset.resident_images(sp)) for sp in splits}


def device_decoder(dataset: Any, images: dict | None = None, by_split: bool = False) -> Callable[[Any], Any]:
    """A jitted function from what ``batches(**host_kwargs(dataset, resident))`` yields (placed on devices) to the
    tasks' batch, keeping its sharding. ``images``: ``resident_images(...)`` for index batches (None: uint8 ones);
    ``by_split``: the input is a dict {split: batch}, else one batch of split "train". The identity for a dataset
    without ``decode``."""
    if not encodes(dataset):
        return lambda batch: batch
    images = images or {}
    if by_split:
        chunk_fn = jax.jit(lambda chunk, imgs: {sp: dataset.decode(b, imgs.get(sp)) for sp, b in chunk.items()})
        return lambda chunk: chunk_fn(chunk, {sp: images[sp] for sp in chunk if sp in images})
    one = batch_decoder(dataset)
    return lambda batch: one(batch, images.get("train"))


def batch_decoder(dataset: Any) -> Callable[[Any, Any], Any]:
    """The jitted ``(batch, images or None) -> task batch`` of one split (the identity for a dataset without
    ``decode``). Build it once per dataset and reuse it: every new ``jax.jit`` wrapper compiles again."""
    if not encodes(dataset):
        return lambda batch, images=None: batch
    return jax.jit(lambda batch, images: dataset.decode(batch, images))
