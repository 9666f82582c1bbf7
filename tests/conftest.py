"""Shared test setup: no wandb, quiet TensorFlow, a non-interactive matplotlib backend."""

import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
# On a GPU machine (`make test` there): JAX takes GPU memory as it needs it instead of 75% of the card up front, so
# the CLI subprocesses that tests start find memory too; and the in-process tests, which assume one device (several
# devices are tested on forced CPU devices: tests/test_parallel.py), see one GPU. Both are no-ops on a CPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

# One persistent compilation cache for the whole session, never the user's ~/.cache: in-process tests and the CLI
# subprocesses they start (which inherit the variable) reuse each other's compiled steps.
if "MULO_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["MULO_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mulo-test-jaxcache-")
    atexit.register(shutil.rmtree, os.environ["MULO_COMPILATION_CACHE_DIR"], True)
from mulo.app import runtime  # noqa: E402
from mulo.app.config import load_config  # noqa: E402

runtime.apply(load_config(None))  # as the CLI does: the variable above wins over the default directory


def random_image_dataset(name: str, n: int = 64, seed: int = 0):
    """The real ImageDataset (uint8 host images, host gather + normalisation) over random uint8 pools: ``n`` train
    and 16 test images of the named source's shape and classes."""
    import numpy as np

    from mulo.data.images import IMAGE_SOURCES, ImageDataset

    rng = np.random.default_rng(seed)
    src = IMAGE_SOURCES[name]
    make = lambda k: (rng.integers(0, 256, (k,) + tuple(src.shape), dtype=np.uint8),  # noqa: E731
                      rng.integers(0, src.num_classes, (k,), dtype=np.int32))
    data = {"train": make(n), "test": make(16)}
    return ImageDataset(name, loader=lambda: data)
