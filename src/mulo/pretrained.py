"""The names of the pretrained learned optimizers: ``--checkpoint pretrained:NAME`` and ``as_optax("pretrained:NAME")``.

Pure data (no imports of JAX), so that the command line's ``--help`` can list the names. Each name points either at a
θ file shipped in the repository's ``pretrained/`` folder (with its config, meta-training curve and model card
``pretrained/<name>.md``) or at a Hugging Face hub model (``hf:OWNER/NAME``, downloaded and cached on first use).
``mulo.optimizers.sources`` resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# the repository's pretrained/ folder (src/mulo/pretrained.py -> repository root)
PRETRAINED_DIR = Path(__file__).resolve().parents[2] / "pretrained"


@dataclass(frozen=True)
class Pretrained:
    name: str
    location: str  # "hf:OWNER/NAME" or a file name inside PRETRAINED_DIR
    summary: str


PRETRAINED: tuple[Pretrained, ...] = (
    Pretrained("cpu_mulo_m_fmnist", "cpu_mulo_m_fmnist.msgpack",
               "muLO meta-trained here on a 2-core CPU: Fashion-MNIST muMLPs, widths 32/64/128 "
               "(config/meta_train/cpu_mulo_m.py; pretrained/cpu_mulo_m_fmnist.md)"),
    Pretrained("cpu_mulo_general", "cpu_mulo_general.msgpack",
               "muLO meta-trained here on a 2-core CPU on three task families at once: cpu_mulo_m_fmnist "
               "fine-tuned on Fashion-MNIST muMLPs (widths 32/64) and muViTs (width 32) and Tiny Shakespeare "
               "muTransformers (width 32) (config/meta_train/cpu_mulo_general_warm.py; "
               "pretrained/cpu_mulo_general.md)"),
    Pretrained("mulo_m", "hf:btherien/mulo",
               "the muLO paper's muLO_M (ImageNet 32x32 muMLPs, widths 128/512/1024), from the Hugging Face hub"),
)


def names() -> tuple[str, ...]:
    return tuple(p.name for p in PRETRAINED)


def help_text() -> str:
    """One line for ``--help``: the accepted ``pretrained:`` names."""
    return "pretrained:NAME with NAME one of " + ", ".join(names())
