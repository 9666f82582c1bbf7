"""uint8 images to the device, normalised there (src/mulo/data/transfer.py): the same values as the host's
normalisation, bit for bit, through the prefetcher, meta-training's streams and meta-test's loop."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulo.config import load_config
from mulo.data import get_dataset
from mulo.data.images import IMAGE_SOURCES, ImageDataset
from mulo.data.prefetch import DevicePrefetcher
from mulo.data.transfer import device_decoder, encodes, host_kwargs


def _random_dataset(name, n=64, seed=0):
    rng = np.random.default_rng(seed)
    src = IMAGE_SOURCES[name]
    make = lambda k: (rng.integers(0, 256, (k,) + src.shape, dtype=np.uint8),
                      rng.integers(0, src.num_classes, (k,), dtype=np.int32))
    data = {"train": make(n), "test": make(16)}
    return ImageDataset(name, loader=lambda: data)


@pytest.mark.parametrize("name", ["fashionmnist-28x28x1", "imagenet-32x32x3"])  # x/255, and ImageNet mean/std
def test_decode_on_device_equals_host_normalisation_bit_for_bit(name):
    ds = _random_dataset(name)
    shape = (2, 3, 4)
    host = list(itertools.islice(ds.batches("train", shape, seed=5), 3))
    enc = list(itertools.islice(ds.batches("train", shape, seed=5, **host_kwargs(ds)), 3))
    decode = device_decoder(ds)
    for h, e in zip(host, enc):
        assert e["x"].dtype == np.uint8 and e["x"].nbytes * 4 == h["x"].nbytes  # 4x fewer bytes to copy
        d = decode(jax.device_put(e))
        assert isinstance(d["x"], jax.Array) and d["x"].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(d["x"]), h["x"])
        np.testing.assert_array_equal(np.asarray(d["y"]), h["y"])
    # a block (a process's part) is the same block of the whole
    part = (slice(0, 2), slice(1, 3), slice(0, 4))
    block = next(ds.batches("train", shape, seed=5, part=part, encoded=True))
    np.testing.assert_array_equal(np.asarray(decode(block)["x"]), host[0]["x"][part])


def test_text_datasets_are_sent_as_they_are():
    ds = get_dataset("tinyshakespeare-s16-vbyte")
    assert not encodes(ds) and host_kwargs(ds) == {}
    batch = next(ds.batches("train", (2, 3), seed=0))
    assert device_decoder(ds)(batch) is batch


def test_prefetcher_decodes_by_split_on_its_devices():
    ds = _random_dataset("cifar10-32x32x3")
    chunks = ({sp: next(ds.batches(sp, (2, 2, 4), seed=s, encoded=True)) for sp in ("train", "meta_valid")}
              for s in itertools.count())
    with DevicePrefetcher(chunks, size=2, batch_axis=2, transform=device_decoder(ds, by_split=True)) as it:
        got = [next(it) for _ in range(3)]
    for s, chunk in enumerate(got):
        for sp in ("train", "meta_valid"):
            expected = next(ds.batches(sp, (2, 2, 4), seed=s))
            assert chunk[sp]["x"].dtype == jnp.float32 and chunk[sp]["x"].devices() == {jax.local_devices()[0]}
            np.testing.assert_array_equal(np.asarray(chunk[sp]["x"]), expected["x"])


def _mlp_task(ds, width=8):
    from mulo.tasks import TaskSettings, parse_task_name
    from mulo.tasks.mlp import MLPTask

    return MLPTask(parse_task_name(f"mumlp-w{width}-d2_{ds.name}"), TaskSettings(), ds)


def test_meta_train_streams_carry_the_normalised_batches():
    from mulo.meta.train import MetaTrainer
    from mulo.optimizers import build_learned

    ds = _random_dataset("fashionmnist-28x28x1")
    cfg = load_config(None, cli=dict(num_tasks=2, trunc_length=4, steps_per_jit=2, num_inner_steps=8,
                                     truncation_schedule_min_length=4, local_batch_size=4, progress=False))
    trainer = MetaTrainer(cfg, [_mlp_task(ds)], build_learned(cfg.replace(optimizer="mup_small_fc_mlp")))
    streams = trainer.streams(0)
    try:
        got = [next(streams[0]) for _ in range(2)]
    finally:
        for it in streams:
            it.close()
    with pytest.MonkeyPatch.context() as mp:  # the old path: float32 normalised on the host
        mp.setattr("mulo.meta.train.host_kwargs", lambda dataset: {})
        plain = trainer.host_stream(0, 0)
        expected = [next(plain) for _ in range(2)]
    assert set(got[0]) == set(expected[0])
    for g, e in zip(got, expected):
        for sp in e:
            assert g[sp]["x"].dtype == jnp.float32
            np.testing.assert_array_equal(np.asarray(g[sp]["x"]), e[sp]["x"])
            np.testing.assert_array_equal(np.asarray(g[sp]["y"]), e[sp]["y"])


def test_meta_test_loop_is_unchanged_by_the_transfer(monkeypatch):
    from mulo.evaluate.train_loop import LoopSettings, TrainLoop
    from mulo.optimizers import adam

    ds = _random_dataset("fashionmnist-28x28x1", n=256)
    settings = LoopSettings(num_steps=12, batch_size=8, steps_per_jit=5, skip_test=True, progress=False)
    encoded = TrainLoop(_mlp_task(ds), adam(1e-2), settings).run(seed=1)
    monkeypatch.setattr("mulo.evaluate.train_loop.host_kwargs", lambda dataset: {})
    monkeypatch.setattr("mulo.evaluate.train_loop.device_decoder", lambda dataset: (lambda batch: batch))
    host = TrainLoop(_mlp_task(ds), adam(1e-2), settings).run(seed=1)
    assert encoded.steps_completed == host.steps_completed == 12
    assert encoded.train_losses == host.train_losses  # identical inputs give identical losses
