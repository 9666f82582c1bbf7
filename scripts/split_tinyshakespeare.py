"""Split the shipped Tiny Shakespeare into two halves of disjoint text, so that a meta-trained LO can be tested on
text it never saw (config/meta_train/cpu_mulo_general.py meta-trains on the first half, the held-out suite
config/meta_test/heldout_suite.py trains its transformers on the second).

    python scripts/split_tinyshakespeare.py [OUT_DIR]     # default data/tinyshakespeare_halves

writes OUT_DIR/first_half.txt and OUT_DIR/second_half.txt, cut at the first blank line (a break between speeches)
after the middle of the text. Deterministic; rerunning rewrites the same bytes. Each half is then split 90/5/5 into
train / meta_valid / test by the dataset, as the whole text is.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "mulo" / "data" / "assets" / "tinyshakespeare" / "input.txt"


def halves(text: str) -> tuple[str, str]:
    cut = text.find("\n\n", len(text) // 2)
    if cut < 0:
        raise ValueError("no blank line after the middle of the text")
    return text[:cut + 1], text[cut + 2:]


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("data/tinyshakespeare_halves")
    out.mkdir(parents=True, exist_ok=True)
    first, second = halves(SOURCE.read_text(encoding="utf-8"))
    _write(out / "first_half.txt", first)
    _write(out / "second_half.txt", second)
    print(f"{out}/first_half.txt: {len(first)} characters; {out}/second_half.txt: {len(second)} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
