"""The device prefetch iterator: shapes, order, no repeats, errors from the producer, close()."""

import itertools
import threading
import time

import jax
import numpy as np
import pytest

from mulo.data import get_dataset
from mulo.data.prefetch import DevicePrefetcher
from mulo.parallel import batch_sharding


def _numbered(n=None, shape=(2, 3, 4)):
    """Host batches whose every entry holds the batch's index."""
    counter = itertools.count() if n is None else range(n)
    for i in counter:
        yield {"x": np.full(shape + (5,), i, np.float32), "y": np.full(shape, i, np.int32)}


def test_shapes_and_devices():
    with DevicePrefetcher(_numbered(), size=3, batch_axis=2) as it:
        batch = next(it)
        assert isinstance(batch["x"], jax.Array) and batch["x"].shape == (2, 3, 4, 5)
        assert batch["y"].dtype == np.int32 and batch["y"].shape == (2, 3, 4)
        assert batch["x"].devices() == {jax.local_devices()[0]}


def test_order_is_the_host_order_and_no_batch_twice():
    with DevicePrefetcher(_numbered(), size=4, batch_axis=2) as it:
        seen = [int(next(it)["y"][0, 0, 0]) for _ in range(50)]
    assert seen == list(range(50))


def test_real_dataset_order_under_a_seed():
    ds = get_dataset("tinyshakespeare-s16-vbyte")
    expected = list(itertools.islice(ds.batches("train", (2, 2, 3), seed=3), 6))
    with DevicePrefetcher(ds.batches("train", (2, 2, 3), seed=3), size=2, batch_axis=2) as it:
        got = [next(it) for _ in range(6)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(np.asarray(g["x"]), e["x"])
        np.testing.assert_array_equal(np.asarray(g["y"]), e["y"])
    keys = {np.asarray(g["x"]).tobytes() for g in got}
    assert len(keys) == 6


def test_finite_iterators_end():
    it = DevicePrefetcher(_numbered(3), size=2)
    assert [int(b["y"][0, 0, 0]) for b in it] == [0, 1, 2]
    with pytest.raises(StopIteration):
        next(it)
    it.close()


def test_producer_errors_are_reraised_in_order():
    def broken():
        yield from _numbered(2)
        raise ValueError("disk on fire")

    it = DevicePrefetcher(broken(), size=4)
    assert int(next(it)["y"][0, 0, 0]) == 0
    assert int(next(it)["y"][0, 0, 0]) == 1
    with pytest.raises(ValueError, match="disk on fire"):
        next(it)
    it.close()


def test_close_stops_the_thread_and_bounds_the_queue():
    produced = []

    def counting():
        for b in _numbered():
            produced.append(1)
            yield b

    it = DevicePrefetcher(counting(), size=2)
    next(it)
    time.sleep(0.3)
    assert len(produced) <= 1 + 2 + 1  # consumed + queued + one in hand
    it.close()
    assert not it._thread.is_alive()
    with pytest.raises((StopIteration, RuntimeError)):
        next(it)
    it.close()  # twice is fine
    assert not any(t.name == "mulo-prefetch" and t.is_alive() and t is it._thread for t in threading.enumerate())


def test_sharding_spec_splits_the_batch_axis():
    sharding = batch_sharding(4, 2, jax.local_devices())
    assert tuple(sharding.spec) == (None, None, "batch", None)
    with pytest.raises(ValueError):
        DevicePrefetcher(_numbered(1), size=0)


def test_batches_are_sharded_over_several_devices(tmp_path):
    """Two fake CPU devices (a subprocess, since the device count is fixed at JAX start-up)."""
    import os
    import subprocess
    import sys

    code = """
import numpy as np, jax
from mulo.data.prefetch import DevicePrefetcher
assert len(jax.local_devices()) == 2
host = ({"x": np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5) + i} for i in range(3))
with DevicePrefetcher(host, size=2, batch_axis=2) as it:
    b = next(it)
    shards = sorted((s.index[2].start, s.data.shape) for s in b["x"].addressable_shards)
    assert shards == [(0, (2, 3, 2, 5)), (2, (2, 3, 2, 5))], shards
    np.testing.assert_array_equal(np.asarray(b["x"]), np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5))
    try:
        DevicePrefetcher(iter([{"x": np.zeros((3,))}]), batch_axis=0).__next__()
        raise SystemExit("odd batch was not refused")
    except ValueError as e:
        assert "divisible" in str(e)
print("OK")
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
