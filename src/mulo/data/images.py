"""Image classification datasets: uint8 in host RAM, normalised to float32 one batch at a time.

Batches come in one of three forms (``batches(..., form=)``): ``"float"`` normalised on the host, ``"uint8"`` the
images themselves, ``"index"`` only their indices into the split (for a copy of the split kept on the device,
``resident_images``). ``decode`` (pure jnp, run on the device after the transfer) turns the last two into the first,
bit for bit. ``mulo.data.transfer`` chooses the form: uint8 moves 4× fewer bytes to the accelerator than float32
and leaves the host only the gather; indices move almost nothing and leave the host no per-image work.

Sources: TFDS when prepared (``download=False`` unless ``tfds_download``); Fashion-MNIST also from its IDX ``.gz``
files (``fashion_mnist_dir``, else Debian's ``/usr/share/datasets/fashion-mnist``, else TFDS).

Splits (no overlap, unlike the reference's ``train[98:99%]`` bug): ``train`` = the first 80% of the official
training set, ``meta_valid`` = the next 10% (the last 10% is unused), ``test`` = the official test split
(ImageNet: its validation set). Normalisation as the reference: x/255 for Fashion-MNIST and CIFAR-10, ImageNet
mean/std for ImageNet.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mulo.data.sampling import check_split, epoch_indices, num_items, split_rng
from mulo.errors import DataError, one_line
from mulo.io import private_tempdir

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
TRAIN_FRACTION = 0.8
META_VALID_FRACTION = 0.1
FORMS = ("float", "uint8", "index")  # what ``ImageDataset.batches`` yields: see the module docstring
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageSource:
    """How to get one image dataset."""

    tfds_name: str
    test_split: str  # the official held-out split in TFDS
    shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    how_to_get: str = ""


IMAGE_SOURCES: dict[str, ImageSource] = {
    "fashionmnist-28x28x1": ImageSource(
        "fashion_mnist", "test", (28, 28, 1), 10,
        how_to_get="run `apt-get install dataset-fashion-mnist`, set fashion_mnist_dir, or set tfds_download true"),
    "cifar10-32x32x3": ImageSource(
        "cifar10", "test", (32, 32, 3), 10,
        how_to_get="prepare it with `tfds build cifar10` (same data_dir) or set tfds_download true"),
    "imagenet-32x32x3": ImageSource(
        "imagenet_resized/32x32", "validation", (32, 32, 3), 1000, _IMAGENET_MEAN, _IMAGENET_STD,
        how_to_get="prepare it with `tfds build imagenet_resized/32x32` (needs the manual ImageNet download) or "
                   "set tfds_download true"),
    "imagenet-64x64x3": ImageSource(
        "imagenet_resized/64x64", "validation", (64, 64, 3), 1000, _IMAGENET_MEAN, _IMAGENET_STD,
        how_to_get="prepare it with `tfds build imagenet_resized/64x64` (needs the manual ImageNet download) or "
                   "set tfds_download true"),
}


# ---------------------------------------------------------------------------------------------------------------------
# loaders: each returns {"train": (images uint8 NHWC, labels int32), "test": (...)}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array (MNIST format: magic 0 0 dtype ndim, big-endian
    int32 dims, then the data)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError; a truncated .gz an EOFError
        raise DataError(f"{path} is damaged ({type(exc).__name__}: {one_line(exc)}): download it again; "
                        f"{IMAGE_SOURCES['fashionmnist-28x28x1'].how_to_get}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(raw[2])
    if dtype is None:
        raise DataError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is damaged: its IDX header says {dims} but it holds {data.size} values")
    return data.reshape(dims)


_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_dir(settings: Any) -> Path | None:
    """The folder of Fashion-MNIST IDX files to use, or None for TFDS. A configured folder must hold the files."""
    configured = getattr(settings, "fashion_mnist_dir", None)
    candidates = [Path(configured)] if configured else [Path(DEBIAN_FASHION_MNIST)]
    for folder in candidates:
        if all(_idx_file(folder, stem) for pair in _FMNIST_FILES.values() for stem in pair):
            return folder
    if configured:
        raise DataError(f"Fashion-MNIST not found in {configured} (need train-images-idx3-ubyte.gz, "
                        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz): "
                        f"{IMAGE_SOURCES['fashionmnist-28x28x1'].how_to_get}")
    return None


def load_fashion_mnist_idx(folder: Path, which: str) -> tuple[np.ndarray, np.ndarray]:
    """The official ``which`` ("train" or "test") split from IDX files as (uint8 NHWC, int32 labels)."""
    images, labels = _FMNIST_FILES[which]
    x = read_idx(_idx_file(folder, images))
    y = read_idx(_idx_file(folder, labels))
    if x.ndim != 3 or y.shape != (x.shape[0],):
        raise DataError(f"Fashion-MNIST files in {folder} have unexpected shapes {x.shape} and {y.shape}")
    return np.ascontiguousarray(x[..., None]), y.astype(np.int32)


def load_tfds_split(tfds_name: str, split: str, data_dir: str | None, download: bool, how_to_get: str,
                    chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """A whole TFDS image split as (uint8 NHWC, int32 labels), filled chunk by chunk (no float copy)."""
    from absl import logging as absl_logging

    from mulo.data.tf_env import import_tfds

    tfds = import_tfds()

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # a missing dataset is reported as one line below, not as warnings
    try:
        with private_tempdir("mulo-tfds-"):  # TFDS leaves an empty temporary directory per dataset-info lookup
            ds = tfds.load(tfds_name, split=split, data_dir=data_dir, download=download, as_supervised=True,
                           shuffle_files=False)
    except Exception as exc:  # tfds raises AssertionError / DatasetNotFoundError / FileNotFoundError ...
        where = data_dir or "the TFDS default data_dir"
        raise DataError(f"TFDS dataset {tfds_name} ({split}) not available in {where}: {how_to_get} "
                        f"[{type(exc).__name__}: {one_line(exc)}]") from None
    finally:
        absl_logging.set_verbosity(verbosity)
    n = int(ds.cardinality())
    images, labels, filled = None, None, 0
    parts_x, parts_y = [], []
    for x, y in tfds.as_numpy(ds.batch(chunk)):
        x = np.asarray(x, np.uint8)
        if x.ndim == 3:
            x = x[..., None]
        if n > 0:
            if images is None:
                images = np.empty((n,) + x.shape[1:], np.uint8)
                labels = np.empty((n,), np.int32)
            images[filled:filled + len(x)] = x
            labels[filled:filled + len(x)] = y
            filled += len(x)
        else:
            parts_x.append(x)
            parts_y.append(np.asarray(y, np.int32))
    if n > 0:
        return images[:filled], labels[:filled]
    if not parts_x:
        raise DataError(f"TFDS dataset {tfds_name} ({split}) is empty")
    return np.concatenate(parts_x), np.concatenate(parts_y)


# ---------------------------------------------------------------------------------------------------------------------


class ImageDataset:
    """An image classification dataset with splits train / meta_valid / test, loaded on first use."""

    kind = "image"

    def __init__(self, name: str, settings: Any = None,
                 loader: Callable[[], dict[str, tuple[np.ndarray, np.ndarray]]] | None = None):
        if name not in IMAGE_SOURCES:
            raise DataError(f"unknown image dataset {name!r}: expected one of {', '.join(IMAGE_SOURCES)}")
        self.name = name
        self.source = IMAGE_SOURCES[name]
        self.image_shape = self.source.shape
        self.num_classes = self.source.num_classes
        self._settings = settings
        self._loader = loader
        self._raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._mean = np.asarray(self.source.mean, np.float32) * 255.0
        self._inv_std = 1.0 / (np.asarray(self.source.std, np.float32) * 255.0)

    # -- spec
    def example_spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Per-example shapes and dtypes of a batch (leading batch axes excluded)."""
        return {"x": (self.image_shape, np.float32), "y": ((), np.int32)}

    # -- loading
    def _load_source(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """``which`` in {"train", "test"}: the official splits as uint8 images and int32 labels."""
        if self._loader is not None:
            return self._loader()[which]
        s = self._settings
        data_dir = getattr(s, "data_dir", None)
        download = bool(getattr(s, "tfds_download", False))
        if self.name == "fashionmnist-28x28x1":
            folder = fashion_mnist_dir(s)
            if folder is not None:
                return load_fashion_mnist_idx(folder, which)
            try:
                return load_tfds_split(self.source.tfds_name, "train" if which == "train" else "test", data_dir,
                                       download, self.source.how_to_get)
            except DataError as exc:
                where = getattr(s, "fashion_mnist_dir", None) or DEBIAN_FASHION_MNIST
                raise DataError(f"Fashion-MNIST not found in {where} nor in TFDS "
                                f"({data_dir or 'default data_dir'}): {self.source.how_to_get}") from exc
        split = "train" if which == "train" else self.source.test_split
        return load_tfds_split(self.source.tfds_name, split, data_dir, download, self.source.how_to_get)

    def raw(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 images and int32 labels of a split (views into the loaded official split)."""
        check_split(self.name, split)
        which = "test" if split == "test" else "train"
        with self._lock:
            if which not in self._raw:
                x, y = self._load_source(which)
                if tuple(x.shape[1:]) != self.image_shape:
                    raise DataError(f"{self.name}: images have shape {x.shape[1:]}, expected {self.image_shape}")
                self._raw[which] = (x, y.astype(np.int32, copy=False))
            x, y = self._raw[which]
        if split == "test":
            return x, y
        n = len(x)
        a, b = int(n * TRAIN_FRACTION), int(n * (TRAIN_FRACTION + META_VALID_FRACTION))
        return (x[:a], y[:a]) if split == "train" else (x[a:b], y[a:b])

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> float32, (x - 255 mean) / (255 std)."""
        return (images.astype(np.float32) - self._mean) * self._inv_std

    def resident_images(self, split: str) -> np.ndarray:
        """The uint8 images of ``split`` that ``form="index"`` batches index (to be placed on the device once)."""
        return self.raw(split)[0]

    def decode(self, batch: dict, images: Any = None) -> dict:
        """A ``form="uint8"`` batch, or a ``form="index"`` one with its split's ``images`` (on the device), -> the
        ``form="float"`` batch, in jnp (jit it; runs on the device holding the batch). The same two float32
        operations as ``normalize``, so the values are identical."""
        import jax.numpy as jnp

        x = batch["x"] if "i" not in batch else jnp.take(images, batch["i"], axis=0)
        x = (x.astype(jnp.float32) - jnp.asarray(self._mean)) * jnp.asarray(self._inv_std)
        return {"x": x, "y": batch["y"]}

    # -- Dataset protocol
    def batches(self, split: str, shape: tuple[int, ...], seed: int,
                part: tuple[slice, ...] | None = None, form: str = "float") -> Iterator[dict]:
        """Endless batches of ``shape`` (e.g. (S, N, B)); ``part`` (slices of ``shape``) yields only that block of
        each, gathering and normalising only its images (a process's own devices' shard in a multi-process run).
        ``form``: "float" {"x": float32 images, "y"}, "uint8" {"x": uint8 images, "y"} or "index" {"i": int32
        indices into ``resident_images(split)``, "y"}; the same examples in every form."""
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        x, y = self.raw(split)
        shape = tuple(int(s) for s in shape)
        rng = split_rng(seed, split, self.name)
        for idx in epoch_indices(len(x), num_items(shape), rng):
            idx = idx.reshape(shape)
            if part is not None:
                idx = idx[tuple(part)]
            if form == "index":
                yield {"i": idx.astype(np.int32), "y": y[idx]}
                continue
            images = x[idx.reshape(-1)]
            images = self.normalize(images) if form == "float" else images
            yield {"x": images.reshape(idx.shape + self.image_shape), "y": y[idx]}

    def eval_batches(self, split: str, batch_size: int, max_examples: int | None = None) -> Iterator[dict]:
        x, y = self.raw(split)
        n = len(x) if max_examples is None else min(len(x), int(max_examples))
        for start in range(0, n, int(batch_size)):
            stop = min(n, start + int(batch_size))
            yield {"x": self.normalize(x[start:stop]), "y": y[start:stop]}

    def num_examples(self, split: str) -> int:
        return len(self.raw(split)[0])
