"""Images to the device as uint8, or kept there and gathered from indices (data_on_device), normalised there
(src/mulo/data/transfer.py): the same values as the host's normalisation, bit for bit, through the prefetcher,
meta-training's streams (one device and a 2x2 mesh) and meta-test's loop."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_image_dataset
from mulo.app.config import load_config
from mulo.data import get_dataset
from mulo.data.prefetch import DevicePrefetcher
from mulo.data.transfer import device_decoder, encodes, host_kwargs, resident_images, wants_resident
from mulo.errors import ConfigError
from tests.parallel_cases import first_chunks

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["fashionmnist-28x28x1", "imagenet-32x32x3"])  # x/255, and ImageNet mean/std
def test_decode_on_device_equals_host_normalisation_bit_for_bit(name):
    ds = random_image_dataset(name)
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
    block = next(ds.batches("train", shape, seed=5, part=part, form="uint8"))
    np.testing.assert_array_equal(np.asarray(decode(block)["x"]), host[0]["x"][part])


@pytest.mark.parametrize("name", ["fashionmnist-28x28x1", "imagenet-32x32x3"])
def test_resident_images_gathered_from_indices_equal_host_batches(name):
    ds = random_image_dataset(name)
    shape = (3, 5)
    host = list(itertools.islice(ds.batches("meta_valid", shape, seed=2), 3))
    idx = list(itertools.islice(ds.batches("meta_valid", shape, seed=2, **host_kwargs(ds, resident=True)), 3))
    images = resident_images(ds, ["meta_valid"], jax.device_put)
    assert images["meta_valid"].dtype == jnp.uint8 and images["meta_valid"].shape[0] == len(ds.raw("meta_valid")[0])
    decode = device_decoder(ds, images, by_split=True)
    for h, i in zip(host, idx):
        assert set(i) == {"i", "y"} and i["i"].dtype == np.int32 and i["i"].shape == shape  # only indices travel
        d = decode({"meta_valid": jax.device_put(i)})["meta_valid"]
        np.testing.assert_array_equal(np.asarray(d["x"]), h["x"])
        np.testing.assert_array_equal(np.asarray(d["y"]), h["y"])


def test_when_data_is_kept_on_the_device():
    ds = random_image_dataset("fashionmnist-28x28x1", n=100)  # train split: 80 images of 784 bytes = 62,720 bytes
    cpu = jax.devices("cpu")  # the CPU backend, also on a GPU machine
    gpu = lambda limit: SimpleNamespace(platform="gpu", memory_stats=lambda: {"bytes_limit": limit})  # noqa: E731
    assert wants_resident("on", ds, cpu) and not wants_resident("off", ds, [gpu(10 ** 9)])
    assert not wants_resident("auto", ds, cpu)  # on the CPU the device is the host: nothing to save
    assert wants_resident("auto", ds, [gpu(10 ** 9)])
    assert not wants_resident("auto", ds, [gpu(10 ** 9), gpu(200_000)])  # 62,720 > a quarter of the smallest
    assert wants_resident("auto", ds, [gpu(251_000)]) and not wants_resident("auto", ds, [gpu(250_000)])
    assert not wants_resident("auto", ds, [SimpleNamespace(platform="gpu", memory_stats=lambda: None)])
    assert not wants_resident("on", get_dataset("tinyshakespeare-s16-vbyte"), cpu)  # token ids: no such form
    with pytest.raises(ConfigError, match="data_on_device"):
        load_config(None, cli={"data_on_device": "gpu"})


def test_text_datasets_are_sent_as_they_are():
    ds = get_dataset("tinyshakespeare-s16-vbyte")
    assert not encodes(ds) and host_kwargs(ds) == {}
    batch = next(ds.batches("train", (2, 3), seed=0))
    assert device_decoder(ds)(batch) is batch


def test_prefetcher_decodes_by_split_on_its_devices():
    ds = random_image_dataset("cifar10-32x32x3")
    chunks = ({sp: next(ds.batches(sp, (2, 2, 4), seed=s, form="uint8")) for sp in ("train", "meta_valid")}
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


@pytest.mark.parametrize("mode", ["off", "on"])
def test_meta_train_streams_carry_the_normalised_batches(mode):
    from mulo.app.sections import meta_trainer
    from mulo.optimizers import build_learned

    ds = random_image_dataset("fashionmnist-28x28x1")
    cfg = load_config(None, cli=dict(num_tasks=2, trunc_length=4, steps_per_jit=2, num_inner_steps=8,
                                     truncation_schedule_min_length=4, local_batch_size=4, progress=False,
                                     data_on_device=mode))
    lo = build_learned(cfg.replace(optimizer="mup_small_fc_mlp"))
    trainer = meta_trainer(cfg, [_mlp_task(ds)], lo)
    assert trainer.resident == (mode == "on",)
    got = first_chunks(trainer, 2)
    with pytest.MonkeyPatch.context() as mp:  # the old path: float32 normalised on the host
        mp.setattr("mulo.meta.trainer.host_kwargs", lambda dataset, resident: {})
        plain = trainer.host_stream(0, 0)
        expected = [next(plain) for _ in range(2)]
    assert set(got[0]) == set(expected[0])
    for g, e in zip(got, expected):
        for sp in e:
            assert g[sp]["x"].dtype == jnp.float32
            np.testing.assert_array_equal(np.asarray(g[sp]["x"]), e[sp]["x"])
            np.testing.assert_array_equal(np.asarray(g[sp]["y"]), e[sp]["y"])


@pytest.mark.parametrize("mode", ["off", "on"])
def test_meta_test_loop_is_unchanged_by_the_transfer(monkeypatch, mode):
    from mulo.evaluate.train_loop import LoopSettings, TrainLoop
    from mulo.optimizers import adam

    ds = random_image_dataset("fashionmnist-28x28x1", n=256)
    settings = LoopSettings(num_steps=12, batch_size=8, steps_per_jit=5, skip_test=True, progress=False,
                            data_on_device=mode)
    encoded = TrainLoop(_mlp_task(ds), adam(1e-2), settings).run(seed=1)
    monkeypatch.setattr("mulo.evaluate.train_loop.host_kwargs", lambda dataset, resident: {})
    monkeypatch.setattr("mulo.evaluate.train_loop.batch_decoder", lambda dataset: (lambda batch, images: batch))
    host = TrainLoop(_mlp_task(ds), adam(1e-2), settings).run(seed=1)
    assert encoded.steps_completed == host.steps_completed == 12
    assert encoded.train_losses == host.train_losses  # identical inputs give identical losses


@pytest.mark.parametrize("mode", ["off", "on"])
def test_meta_test_loop_compiles_its_decode_once_for_all_seeds(mode):
    from mulo.evaluate.train_loop import LoopSettings, TrainLoop
    from mulo.optimizers import adam

    ds = random_image_dataset("fashionmnist-28x28x1", n=256)
    traces = []
    decode = ds.decode
    ds.decode = lambda batch, images=None: (traces.append(1), decode(batch, images))[1]
    settings = LoopSettings(num_steps=6, batch_size=8, steps_per_jit=3, skip_test=True, progress=False,
                            data_on_device=mode)
    loop = TrainLoop(_mlp_task(ds), adam(1e-2), settings)
    runs = [loop.run(seed=s) for s in (0, 1, 2)]
    assert all(r.steps_completed == 6 for r in runs)
    assert runs[0].train_losses != runs[1].train_losses  # seeds differ in data order, through the same decode
    assert len(traces) == 1  # traced (compiled) once; a new jit per seed would trace 3 times


def test_resident_chunks_on_a_2x2_mesh_equal_the_host_ones(tmp_path):
    from tests.test_parallel import _env, _result

    proc = subprocess.run([sys.executable, str(REPO / "tests" / "parallel_cases.py"), "resident-streams",
                           str(tmp_path)], env=_env(4), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _result(proc.stdout)
    assert r["devices"] == 4 and r["resident"] == {"on": [True], "off": [False]}
    assert r["equal"] and r["same_sharding"] and r["dtypes"] == ["float32", "int32"], r
    assert any("'pairs', 'batch'" in s for s in r["shardings"]), r  # split over both mesh axes
