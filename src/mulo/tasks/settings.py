"""Settings that shape a task: muP multipliers, head size, and where its data lives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from mulo.hparams import POSITIVE, hparam
from mulo.tasks.base import MupMultipliers


@dataclass(frozen=True)
class TaskOptions:
    """The ``task_options`` config section: the options every task reads besides its name."""

    mup_input_mult: float = hparam(1.0, "muP forward multiplier of the input layer's output", min=POSITIVE)
    mup_output_mult: float = hparam(1.0, "muP multiplier of the logits (times 1/fan_in of the readout)",
                                    min=POSITIVE)
    mup_hidden_lr_mult: float = hparam(1.0, "muP update scale of hidden matrices (times 1/fan_in)", min=POSITIVE)
    d_head: int = hparam(64, "transformer head dimension (width must be divisible by it)", min=1)


@dataclass(frozen=True)
class TaskSettings:
    """Everything besides the task name that a task needs (config keys in brackets).

    input_mult, output_mult, hidden_lr_mult: the muP knobs [mup_input_mult, mup_output_mult, mup_hidden_lr_mult];
    d_head: transformer head dimension [d_head]; data_dir: TFDS data dir [data_dir]; tfds_download: let TFDS
    download [tfds_download]; fashion_mnist_dir: Fashion-MNIST IDX folder [fashion_mnist_dir];
    tinyshakespeare_path: Tiny Shakespeare text file [tinyshakespeare_path]; vocab_path: SentencePiece model for the
    32k-vocabulary text datasets [vocab_path].
    """

    input_mult: float = 1.0
    output_mult: float = 1.0
    hidden_lr_mult: float = 1.0
    d_head: int = 64
    data_dir: str | None = None
    tfds_download: bool = False
    fashion_mnist_dir: str | None = None
    tinyshakespeare_path: str | None = None
    vocab_path: str | None = None

    @property
    def multipliers(self) -> MupMultipliers:
        return MupMultipliers(self.input_mult, self.output_mult, self.hidden_lr_mult)

    @classmethod
    def from_config(cls, cfg: Any) -> "TaskSettings":
        """Read the config keys of the same names (``mup_`` prefix for the multipliers)."""
        get = cfg.__getitem__ if isinstance(cfg, Mapping) else lambda k: getattr(cfg, k)
        return cls(input_mult=float(get("mup_input_mult")), output_mult=float(get("mup_output_mult")),
                   hidden_lr_mult=float(get("mup_hidden_lr_mult")), d_head=int(get("d_head")),
                   data_dir=get("data_dir"), tfds_download=bool(get("tfds_download")),
                   fashion_mnist_dir=get("fashion_mnist_dir"), tinyshakespeare_path=get("tinyshakespeare_path"),
                   vocab_path=get("vocab_path"))
