"""Datasets for mulo's tasks (their names: ``mulo.data.names``) and the device prefetch iterator.

``get_dataset(name, settings)`` is cheap: nothing is read until batches are asked for.
"""

from __future__ import annotations

from typing import Any

from mulo.data.images import IMAGE_SOURCES, ImageDataset
from mulo.data.names import IMAGE_DATASETS, TEXT_PATTERNS, accepted, parse_text_dataset
from mulo.data.text import LM1B, TinyShakespeare
from mulo.errors import DataError


def get_dataset(name: str, settings: Any = None):
    """The dataset called ``name`` (an image dataset key or ``lm1b-s{seq}-v32k`` / ``tinyshakespeare-s{seq}-vbyte``).

    ``settings`` is any object with the data attributes of ``mulo.tasks.TaskSettings`` (data_dir, tfds_download,
    fashion_mnist_dir, tinyshakespeare_path, vocab_path); None means the defaults.
    """
    if name in IMAGE_SOURCES:
        return ImageDataset(name, settings)
    text = parse_text_dataset(name)
    if text is not None:
        kind, seq = text
        if seq < 1:
            raise DataError(f"bad sequence length in dataset {name!r}: expected a positive integer")
        return (TinyShakespeare if kind == "tinyshakespeare" else LM1B)(name, seq, settings)
    raise DataError(f"unknown dataset {name!r}: expected one of {accepted()}")


__all__ = ["get_dataset", "ImageDataset", "TinyShakespeare", "LM1B", "IMAGE_SOURCES", "IMAGE_DATASETS", "TEXT_PATTERNS",
           "parse_text_dataset"]
