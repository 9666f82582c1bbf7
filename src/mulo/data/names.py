"""Dataset names: the image datasets (``mulo.data.images.IMAGE_SOURCES``' keys) and the text dataset patterns.

Task names end in one of these (``mulo.tasks.names``); ``get_dataset`` builds them. A family of tasks declares the
kind it takes (``dataset_kind``: "image" or "text").
"""

from __future__ import annotations

import re

from mulo.data.images import IMAGE_SOURCES

IMAGE_DATASETS = tuple(IMAGE_SOURCES)
TEXT_PATTERNS = ("lm1b-s{seq}-v32k", "tinyshakespeare-s{seq}-vbyte")
_TEXT = re.compile(r"^(lm1b)-s(\d+)-v32k$|^(tinyshakespeare)-s(\d+)-vbyte$", re.ASCII)  # ASCII digits only
KINDS = {"image": IMAGE_DATASETS, "text": TEXT_PATTERNS}


def parse_text_dataset(dataset: str) -> tuple[str, int] | None:
    """``("lm1b" | "tinyshakespeare", seq)`` for a text dataset name, else None."""
    m = _TEXT.match(dataset)
    if not m:
        return None
    kind = m.group(1) or m.group(3)
    seq = int(m.group(2) or m.group(4))
    return kind, seq


def dataset_kind(dataset: str) -> str | None:
    """"image", "text", or None for a name that is neither."""
    if dataset in IMAGE_DATASETS:
        return "image"
    return "text" if parse_text_dataset(dataset) is not None else None


def accepted(kind: str | None = None) -> str:
    """The accepted names of one kind (all kinds: None), comma-separated, for error lines."""
    return ", ".join(KINDS[kind] if kind else IMAGE_DATASETS + TEXT_PATTERNS)
