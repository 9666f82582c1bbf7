"""Task names, parsed (not looked up in an enumerated table).

    {model}-w{width}-d{depth}_{dataset}

* model: ``mumlp`` / ``mlp`` (muP / standard MLP on images), ``mutransformer`` / ``transformer`` (muP / standard
  decoder-only LM on text);
* width: any positive integer (transformers: a multiple of ``d_head``);
* depth: any positive integer, the number of hidden layers (MLP) or transformer blocks;
* dataset: an image dataset (``fashionmnist-28x28x1``, ``cifar10-32x32x3``, ``imagenet-32x32x3``,
  ``imagenet-64x64x3``) for MLPs, or a text dataset (``lm1b-s{seq}-v32k``, ``tinyshakespeare-s{seq}-vbyte``) for
  transformers.

A bad name raises ``TaskError`` with one line saying which part is wrong and what is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from mulo.errors import TaskError

MLP_MODELS = ("mumlp", "mlp")
TRANSFORMER_MODELS = ("mutransformer", "transformer")
MODELS = MLP_MODELS + TRANSFORMER_MODELS
MUP_MODELS = ("mumlp", "mutransformer")

IMAGE_DATASETS = ("fashionmnist-28x28x1", "cifar10-32x32x3", "imagenet-32x32x3", "imagenet-64x64x3")
TEXT_PATTERNS = ("lm1b-s{seq}-v32k", "tinyshakespeare-s{seq}-vbyte")
_TEXT = re.compile(r"^(lm1b)-s(\d+)-v32k$|^(tinyshakespeare)-s(\d+)-vbyte$")
_MODEL = re.compile(r"^([a-z]+)-w([^-]*)-d([^-]*)$")

GRAMMAR = "{model}-w{width}-d{depth}_{dataset}"


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task name."""

    model: str
    width: int
    depth: int
    dataset: str

    @property
    def name(self) -> str:
        return f"{self.model}-w{self.width}-d{self.depth}_{self.dataset}"

    @property
    def is_mup(self) -> bool:
        return self.model in MUP_MODELS

    @property
    def family(self) -> str:
        return "mlp" if self.model in MLP_MODELS else "transformer"

    def with_width(self, width: int) -> "TaskSpec":
        return replace(self, width=int(width))


def _accepted_datasets() -> str:
    return ", ".join(IMAGE_DATASETS + TEXT_PATTERNS)


def parse_text_dataset(dataset: str) -> tuple[str, int] | None:
    """``("lm1b" | "tinyshakespeare", seq)`` for a text dataset name, else None."""
    m = _TEXT.match(dataset)
    if not m:
        return None
    kind = m.group(1) or m.group(3)
    seq = int(m.group(2) or m.group(4))
    return kind, seq


def _positive(name: str, part: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise TaskError(f"bad {part} {text!r} in task name {name!r}: expected a positive integer "
                        f"(grammar {GRAMMAR})")
    return int(text)


def parse_task_name(name: str, d_head: int = 64) -> TaskSpec:
    """Parse and validate one task name; raise ``TaskError`` (one line) naming the bad part."""
    name = name.strip()
    if name.count("_") != 1:
        raise TaskError(f"bad task name {name!r}: expected {GRAMMAR}, e.g. mumlp-w128-d3_fashionmnist-28x28x1 or "
                        f"mutransformer-w256-d2_tinyshakespeare-s64-vbyte")
    model_part, dataset = name.split("_")
    m = _MODEL.match(model_part)
    if not m:
        raise TaskError(f"bad model part {model_part!r} in task name {name!r}: expected {{model}}-w{{width}}-d{{depth}} "
                        f"with model one of {', '.join(MODELS)}")
    model, width_text, depth_text = m.groups()
    if model not in MODELS:
        raise TaskError(f"bad model {model!r} in task name {name!r}: expected one of {', '.join(MODELS)}")
    width = _positive(name, "width", width_text)
    depth = _positive(name, "depth", depth_text)

    text = parse_text_dataset(dataset)
    if dataset not in IMAGE_DATASETS and text is None:
        raise TaskError(f"bad dataset {dataset!r} in task name {name!r}: expected one of {_accepted_datasets()} "
                        f"(seq a positive integer)")
    if text is not None and text[1] < 1:
        raise TaskError(f"bad sequence length in dataset {dataset!r} of task name {name!r}: expected a positive "
                        f"integer")
    if model in MLP_MODELS and text is not None:
        raise TaskError(f"bad dataset {dataset!r} for model {model!r} in task name {name!r}: MLPs take an image "
                        f"dataset, one of {', '.join(IMAGE_DATASETS)}")
    if model in TRANSFORMER_MODELS and text is None:
        raise TaskError(f"bad dataset {dataset!r} for model {model!r} in task name {name!r}: transformers take a "
                        f"text dataset, one of {', '.join(TEXT_PATTERNS)}")
    if model in TRANSFORMER_MODELS and width % d_head:
        raise TaskError(f"bad width {width} in task name {name!r}: a transformer's width must be a multiple of "
                        f"d_head={d_head} (heads = width / d_head)")
    return TaskSpec(model=model, width=width, depth=depth, dataset=dataset)


def split_task_names(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (a comma list means multi-task)."""
    if isinstance(names, str):
        names = [names]
    out = [part.strip() for item in names for part in str(item).split(",") if part.strip()]
    if not out:
        raise TaskError("no task name given: expected one or more names like mumlp-w128-d3_fashionmnist-28x28x1")
    return out
