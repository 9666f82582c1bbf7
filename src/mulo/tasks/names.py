"""Task names, parsed (not looked up in an enumerated table).

    {model}-w{width}-d{depth}_{dataset}

* model: ``mumlp`` / ``mlp`` (muP / standard MLP on images), ``mutransformer`` / ``transformer`` (muP / standard
  decoder-only LM on text), ``muvit`` / ``vit`` (muP / standard vision transformer on images; its model part may
  end in ``-p{patch}`` and / or ``-h{heads}``, see ``mulo.tasks.vit``);
* width: any positive integer (transformers: a multiple of ``d_head``);
* depth: any positive integer, the number of hidden layers (MLP) or transformer blocks;
* dataset: an image dataset (``fashionmnist-28x28x1``, ``cifar10-32x32x3``, ``imagenet-32x32x3``,
  ``imagenet-64x64x3``) for MLPs, or a text dataset (``lm1b-s{seq}-v32k``, ``tinyshakespeare-s{seq}-vbyte``) for
  transformers.

The models are those of the registered task families (``mulo.registry.register_task_family``, called by
``mulo.tasks.mlp``, ``mulo.tasks.transformer``, ... where each family is defined): a family says which dataset kind
it takes and checks its own names. A bad name raises ``TaskError`` with one line saying which part is wrong and what
is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from mulo.data.names import accepted, dataset_kind, parse_text_dataset
from mulo.errors import TaskError
from mulo.registry import TaskFamily, model_family, task_models

_MODEL = re.compile(r"^([a-z]+)-w([^-]*)-d([^-]*)((?:-[^-]*)*)$")

GRAMMAR = "{model}-w{width}-d{depth}_{dataset}"
MAX_NAME = 256  # characters; longer is a pasted mistake (and would make the error lines of later checks long)
MAX_SIZE = 2**31 - 1  # widths, depths and sequence lengths fit int32, like every integer config key


def __getattr__(name: str):
    # the registered model names (mulo.registry), looked up when asked for
    if name == "MODELS":
        return task_models()
    if name == "MUP_MODELS":
        return tuple(m for m in task_models() if model_family(m).models[m])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task name."""

    model: str
    width: int
    depth: int
    dataset: str
    options: str = ""  # what follows the depth in the model part, e.g. "-p4-h3" (families with takes_options)

    @property
    def name(self) -> str:
        return f"{self.model}-w{self.width}-d{self.depth}{self.options}_{self.dataset}"

    @property
    def task_family(self) -> TaskFamily:
        """The registered family of the model (``mulo.registry``)."""
        family = model_family(self.model)
        if family is None:
            raise TaskError(f"no task family registers the model {self.model!r}")
        return family

    @property
    def is_mup(self) -> bool:
        return self.task_family.models[self.model]

    @property
    def family(self) -> str:
        return self.task_family.name

    def with_width(self, width: int) -> "TaskSpec":
        return replace(self, width=int(width))


def _positive(name: str, part: str, text: str) -> int:
    # ASCII digits only: str.isdigit() is true for '²' and '١', which int() refuses or reads as another number
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_SIZE:
        raise TaskError(f"bad {part} {_clip(text)!r} in task name {_clip(name)!r}: expected a positive integer "
                        f"of at most {MAX_SIZE} (grammar {GRAMMAR})")
    return int(text)


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def parse_task_name(name: str, d_head: int = 64) -> TaskSpec:
    """Parse and validate one task name; raise ``TaskError`` (one line) naming the bad part. The model names, the
    dataset kind each takes and their own checks come from the registered task families (``mulo.registry``)."""
    name = name.strip()
    shown = _clip(name)  # an over-long name is shown cut, so the error stays one short line
    if name.count("_") != 1:
        raise TaskError(f"bad task name {shown!r}: expected {GRAMMAR}, e.g. mumlp-w128-d3_fashionmnist-28x28x1 or "
                        f"mutransformer-w256-d2_tinyshakespeare-s64-vbyte")
    model_part, dataset = name.split("_")
    models = ", ".join(task_models())
    m = _MODEL.match(model_part)
    if not m:
        raise TaskError(f"bad model part {_clip(model_part)!r} in task name {shown!r}: expected "
                        f"{{model}}-w{{width}}-d{{depth}} with model one of {models}")
    model, width_text, depth_text, options = m.groups()
    family = model_family(model)
    if family is None:
        raise TaskError(f"bad model {_clip(model)!r} in task name {shown!r}: expected one of {models}")
    width = _positive(name, "width", width_text)
    depth = _positive(name, "depth", depth_text)

    kind = dataset_kind(dataset)
    if kind is None:
        raise TaskError(f"bad dataset {_clip(dataset)!r} in task name {shown!r}: expected one of {accepted()} "
                        f"(seq a positive integer)")
    text = parse_text_dataset(dataset)
    if text is not None and not 1 <= text[1] <= MAX_SIZE:
        raise TaskError(f"bad sequence length in dataset {_clip(dataset)!r} of task name {shown!r}: expected a "
                        f"positive integer of at most {MAX_SIZE}")
    if family.dataset_kind is not None and kind != family.dataset_kind:
        article = "an" if family.dataset_kind[0] in "aeiou" else "a"
        raise TaskError(f"bad dataset {dataset!r} for model {model!r} in task name {shown!r}: {family.plural} take "
                        f"{article} {family.dataset_kind} dataset, one of {accepted(family.dataset_kind)}")
    if options and not family.takes_options:
        takers = [f"{f.plural} ({', '.join(f.models)})" for _, f in _families() if f.takes_options]
        raise TaskError(f"bad part {_clip(options)!r} in task name {shown!r}: only "
                        f"{' and '.join(takers) or 'no model'} take parts after the depth")
    if len(name) > MAX_NAME:
        raise TaskError(f"bad task name {shown!r}: longer than {MAX_NAME} characters (grammar {GRAMMAR})")
    spec = TaskSpec(model=model, width=width, depth=depth, dataset=dataset, options=options)
    if family.check is not None:
        family.check(spec, d_head)
    return spec


def _families():
    from mulo.registry import TASK_FAMILIES

    return TASK_FAMILIES.items()


def split_task_names(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]`` (a comma list means multi-task)."""
    if isinstance(names, str):
        names = [names]
    out = [part.strip() for item in names for part in str(item).split(",") if part.strip()]
    if not out:
        raise TaskError("no task name given: expected one or more names like mumlp-w128-d3_fashionmnist-28x28x1")
    return out
