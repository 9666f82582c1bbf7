"""Reproducible index streams shared by the datasets."""

from __future__ import annotations

import math
import zlib
from typing import Iterator

import numpy as np

SPLITS = ("train", "meta_valid", "test")


def check_split(dataset: str, split: str) -> None:
    from mulo.errors import DataError

    if split not in SPLITS:
        raise DataError(f"bad split {split!r} for dataset {dataset!r}: expected one of {', '.join(SPLITS)}")


def split_rng(seed: int, split: str, salt: str = "") -> np.random.Generator:
    """A numpy Generator that depends on (seed, split, salt) only, so every split has its own stream."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), zlib.crc32(salt.encode())])


def num_items(shape: tuple[int, ...]) -> int:
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"batch shape must be a non-empty tuple of positive ints, got {shape}")
    return math.prod(shape)


def epoch_indices(n: int, count: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless chunks of ``count`` indices into range(n): epochs of fresh permutations, concatenated (a chunk can
    span an epoch boundary, so every example is seen once per epoch)."""
    if n < 1:
        raise ValueError("cannot sample from an empty split")
    perm = rng.permutation(n)
    pos = 0
    while True:
        parts, need = [], count
        while need:
            if pos == n:
                perm, pos = rng.permutation(n), 0
            take = min(need, n - pos)
            parts.append(perm[pos:pos + take])
            pos += take
            need -= take
        yield parts[0] if len(parts) == 1 else np.concatenate(parts)
