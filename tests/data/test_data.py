"""Datasets: real Fashion-MNIST and Tiny Shakespeare files, TFDS code paths through tfds.testing.mock_data (with a
tiny locally trained SentencePiece model for lm1b), splits, reproducibility, and the missing-data errors."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mulo.data import get_dataset
from mulo.data import images as images_mod
from mulo.data.images import ImageDataset, read_idx
from mulo.data.text import BYTE_VOCAB_SIZE, DEFAULT_TINYSHAKESPEARE
from mulo.errors import DataError
from mulo.tasks import TaskSettings, get_task

FMNIST = "fashionmnist-28x28x1"
REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (real IDX files)


@pytest.fixture(scope="module")
def fmnist():
    return get_dataset(FMNIST, TaskSettings())


def test_fashion_mnist_from_idx_files(fmnist):
    x_train, y_train = fmnist.raw("train")
    x_valid, y_valid = fmnist.raw("meta_valid")
    x_test, y_test = fmnist.raw("test")
    assert (len(x_train), len(x_valid), len(x_test)) == (48_000, 6_000, 10_000)
    assert x_train.dtype == np.uint8 and x_train.shape[1:] == (28, 28, 1)
    assert y_train.dtype == np.int32 and set(np.unique(y_test)) == set(range(10))
    # train and meta_valid are disjoint slices of the official training set, in file order
    full = read_idx(REAL_FMNIST / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(x_train[:, :, :, 0], full[:48_000])
    np.testing.assert_array_equal(x_valid[:, :, :, 0], full[48_000:54_000])
    assert not np.shares_memory(x_train, x_valid)


def test_fashion_mnist_batches_normalised_and_reproducible(fmnist):
    a = next(fmnist.batches("train", (2, 3, 4), seed=7))
    b = next(fmnist.batches("train", (2, 3, 4), seed=7))
    c = next(fmnist.batches("train", (2, 3, 4), seed=8))
    assert a["x"].shape == (2, 3, 4, 28, 28, 1) and a["x"].dtype == np.float32
    assert a["y"].shape == (2, 3, 4) and a["y"].dtype == np.int32
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], c["x"])
    assert a["x"].min() >= 0.0 and a["x"].max() <= 1.0
    # every example is raw / 255 of a train-split example, with its label
    x_train, y_train = fmnist.raw("train")
    labels = {x_train[i].tobytes(): int(y_train[i]) for i in range(len(x_train))}
    raw = np.rint(a["x"] * 255).astype(np.uint8)
    np.testing.assert_allclose(raw.astype(np.float32) / 255, a["x"], atol=1e-7)
    for ex, label in zip(raw.reshape(24, 28, 28, 1), a["y"].ravel()):
        assert labels[ex.tobytes()] == label
    valid = next(fmnist.batches("meta_valid", (4,), seed=7))
    assert not np.array_equal(valid["x"], a["x"][0, 0])
    eval_batches = list(fmnist.eval_batches("test", 4096, max_examples=5000))
    assert [len(e["y"]) for e in eval_batches] == [4096, 904]
    x_test, y_test = fmnist.raw("test")
    np.testing.assert_array_equal(eval_batches[1]["y"], y_test[4096:5000])
    np.testing.assert_allclose(eval_batches[0]["x"], x_test[:4096].astype(np.float32) / 255.0)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(DataError) as err:
        get_dataset(FMNIST, TaskSettings(fashion_mnist_dir=str(tmp_path))).raw("train")
    msg = str(err.value)
    assert f"Fashion-MNIST not found in {tmp_path}" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "\n" not in msg
    # neither Debian's folder nor TFDS: the same advice
    monkeypatch.setattr(images_mod, "DEBIAN_FASHION_MNIST", str(tmp_path / "nope"))
    with pytest.raises(DataError) as err:
        get_dataset(FMNIST, TaskSettings(data_dir=str(tmp_path / "tfds"))).raw("test")
    assert "Fashion-MNIST not found" in str(err.value) and "tfds_download true" in str(err.value)


def test_fashion_mnist_dir_setting(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / (name + ".gz")).write_bytes((REAL_FMNIST / (name + ".gz")).read_bytes())
    ds = get_dataset(FMNIST, TaskSettings(fashion_mnist_dir=str(tmp_path)))
    assert ds.num_examples("test") == 10_000


def test_read_idx_by_hand(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3i", 2, 3, 4) + data.tobytes()
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), data)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_epochs_see_every_example_once():
    x = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1).repeat(28, 1).repeat(28, 2)
    y = np.arange(50, dtype=np.int32) % 10
    ds = ImageDataset(FMNIST, loader=lambda: {"train": (x, y), "test": (x[:10], y[:10])})
    it = ds.batches("train", (2, 3), seed=0)  # 6 per batch; train split = first 40 examples
    seen = np.concatenate([np.rint(next(it)["x"][..., 0, 0, 0] * 255).astype(int).ravel() for _ in range(20)])
    assert sorted(seen[:40]) == list(range(40)) and sorted(seen[40:80]) == list(range(40))
    assert ds.num_examples("meta_valid") == 5
    with pytest.raises(DataError, match="bad split"):
        ds.raw("valid")


# ---------------------------------------------------------------------------------------------------------------------
# TFDS image datasets (mock data)


@pytest.mark.parametrize("name, shape, classes", [("cifar10-32x32x3", (32, 32, 3), 10),
                                                  ("imagenet-32x32x3", (32, 32, 3), 1000),
                                                  ("imagenet-64x64x3", (64, 64, 3), 1000)])
def test_tfds_images_with_mock_data(tmp_path, name, shape, classes):
    import tensorflow_datasets as tfds

    ds = get_dataset(name, TaskSettings(data_dir=str(tmp_path)))
    with tfds.testing.mock_data(num_examples=40, data_dir=str(tmp_path)):
        x_train, y_train = ds.raw("train")
        x_test, _ = ds.raw("test")
    assert x_train.dtype == np.uint8 and x_train.shape == (32,) + shape  # 80% of 40
    assert len(ds.raw("meta_valid")[0]) == 4 and len(x_test) == 40
    assert y_train.max() < classes
    batch = next(ds.batches("train", (3, 5), seed=1))
    assert batch["x"].shape == (3, 5) + shape and batch["x"].dtype == np.float32
    first = next(ds.eval_batches("train", 8))
    expected = x_train[:8].astype(np.float32) / 255.0
    if name.startswith("imagenet"):
        expected = (expected - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(first["x"], expected, rtol=1e-5, atol=1e-5)
    task = get_task(f"mumlp-w16-d1_{name}", TaskSettings(data_dir=str(tmp_path)))
    assert task.num_classes == classes


def test_missing_tfds_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        get_dataset("imagenet-64x64x3", TaskSettings(data_dir=str(tmp_path))).raw("test")
    msg = str(err.value)
    assert "imagenet_resized/64x64" in msg and "tfds build imagenet_resized/64x64" in msg
    assert "tfds_download true" in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------------------------------
# Tiny Shakespeare (real file)


def test_tinyshakespeare_tokens_and_splits():
    ds = get_dataset("tinyshakespeare-s32-vbyte")
    text = DEFAULT_TINYSHAKESPEARE.read_bytes()
    tokens = ds.tokens()
    np.testing.assert_array_equal(tokens, np.frombuffer(text, np.uint8).astype(np.int32) + 3)  # bytes + 3 specials
    assert ds.vocab_size == BYTE_VOCAB_SIZE == 259
    n = len(tokens)
    parts = [ds.split_tokens(s) for s in ("train", "meta_valid", "test")]
    assert [len(p) for p in parts] == [int(0.9 * n), int(0.95 * n) - int(0.9 * n), n - int(0.95 * n)]
    np.testing.assert_array_equal(np.concatenate(parts), tokens)


def test_byte_ids_are_seqios_byte_vocabulary():
    """Tiny Shakespeare is tokenised without seqio/TensorFlow, with exactly seqio.ByteVocabulary's ids."""
    import seqio

    from mulo.data.text import byte_ids

    text = "First Citizen:\nBefore we proceed — café, naïve, 音\n" + DEFAULT_TINYSHAKESPEARE.read_text()[:2000]
    ids = byte_ids(text)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, np.asarray(seqio.ByteVocabulary().encode(text), np.int32))
    assert seqio.ByteVocabulary().decode(ids.tolist()) == text


def test_tinyshakespeare_ships_with_the_package():
    """A clone alone runs the text tasks and the tests: the default file is inside the package, not a sibling folder."""
    import mulo

    package = Path(mulo.__file__).resolve().parent
    assert DEFAULT_TINYSHAKESPEARE.resolve().is_relative_to(package)
    assert DEFAULT_TINYSHAKESPEARE.stat().st_size == 1_115_394
    assert DEFAULT_TINYSHAKESPEARE.read_text(encoding="utf-8").startswith("First Citizen:\nBefore we proceed")
    assert get_dataset("tinyshakespeare-s32-vbyte").path == DEFAULT_TINYSHAKESPEARE


def test_tinyshakespeare_batches():
    ds = get_dataset("tinyshakespeare-s32-vbyte")
    a = next(ds.batches("train", (2, 3), seed=0))
    assert a["x"].shape == a["y"].shape == (2, 3, 32) and a["x"].dtype == np.int32
    np.testing.assert_array_equal(a["x"][..., 1:], a["y"][..., :-1])
    np.testing.assert_array_equal(next(ds.batches("train", (2, 3), seed=0))["x"], a["x"])
    # every window is a contiguous piece of the train split
    train = ds.split_tokens("train")
    window = np.concatenate([a["x"][0, 0], a["y"][0, 0, -1:]])
    starts = np.flatnonzero(train[:len(train) - 32] == window[0])
    assert any(np.array_equal(train[s:s + 33], window) for s in starts)
    evals = list(ds.eval_batches("test", 10, max_examples=25))
    assert [len(e["x"]) for e in evals] == [10, 10, 5]
    test = ds.split_tokens("test")
    np.testing.assert_array_equal(evals[1]["x"][0], test[330:362])
    np.testing.assert_array_equal(evals[1]["y"][0], test[331:363])


def test_missing_tinyshakespeare(tmp_path):
    ds = get_dataset("tinyshakespeare-s32-vbyte", TaskSettings(tinyshakespeare_path=str(tmp_path / "x.txt")))
    with pytest.raises(DataError, match="Tiny Shakespeare not found at .*set tinyshakespeare_path"):
        next(ds.batches("train", (2,), 0))


# ---------------------------------------------------------------------------------------------------------------------
# lm1b (mock data + a tiny SentencePiece model trained here)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    lines = [line for line in DEFAULT_TINYSHAKESPEARE.read_text().splitlines() if line.strip()][:400]
    lines += ["abcdefghij " * 3, "jihgfedcba ab cd ef gh ij"] * 20  # the mock text's alphabet
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(folder / "tiny"), vocab_size=120,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    return str(folder / "tiny.model")


def test_lm1b_with_mock_data(tmp_path, spm_model):
    import seqio
    import tensorflow_datasets as tfds

    settings = TaskSettings(data_dir=str(tmp_path), vocab_path=spm_model)
    task = get_task("mutransformer-w64-d1_lm1b-s16-v32k", settings)
    ds = task.dataset
    vocab = seqio.SentencePieceVocabulary(spm_model, extra_ids=100)
    assert ds.vocab_size == vocab.vocab_size == task.vocab_size
    assert task.param_shapes["transformer/embed_in"]["embeddings"].shape == (vocab.vocab_size, 64)
    with tfds.testing.mock_data(num_examples=30, data_dir=str(tmp_path)):
        a = next(ds.batches("train", (2, 3), seed=0))
        b = next(ds.batches("train", (2, 3), seed=0))
        evals = list(ds.eval_batches("test", 8, max_examples=20))
    assert a["x"].shape == a["y"].shape == (2, 3, 16) and a["x"].dtype == np.int32
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["x"][..., 1:], a["y"][..., :-1])
    assert [len(e["x"]) for e in evals] == [8, 8, 4]
    # one sentence per row: tokens, EOS, then pad 0
    rows = np.concatenate([e["x"] for e in evals])
    ys = np.concatenate([e["y"] for e in evals])
    assert (ys == 0).any() and (ys == vocab.eos_id).any()
    for x, y in zip(rows, ys):
        full = np.concatenate([x, y[-1:]])
        if (full == 0).any():
            first_pad = int(np.argmax(full == 0))
            assert full[first_pad - 1] == vocab.eos_id and np.all(full[first_pad:] == 0)
    loss = task.loss_and_accuracy(task.init(__import__("jax").random.key(0)), evals[0])[0]
    assert np.isfinite(float(loss))


def test_lm1b_needs_a_vocabulary(tmp_path):
    task = get_task("mutransformer-w64-d1_lm1b-s16-v32k")  # shapes exist without a model: 32,100 ids
    assert task.vocab_size == 32_100
    with pytest.raises(DataError, match="needs a SentencePiece model: set vocab_path"):
        next(task.dataset.batches("train", (2,), 0))
    with pytest.raises(DataError, match="SentencePiece model not found at"):
        get_task("mutransformer-w64-d1_lm1b-s16-v32k", TaskSettings(vocab_path=str(tmp_path / "none.model")))


def test_missing_lm1b(tmp_path, spm_model):
    ds = get_dataset("lm1b-s16-v32k", TaskSettings(data_dir=str(tmp_path), vocab_path=spm_model))
    with pytest.raises(DataError, match="lm1b not available in .*tfds build lm1b"):
        next(ds.batches("train", (2,), 0))
