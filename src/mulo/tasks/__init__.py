"""Tasks: what learned optimizers are meta-trained and tested on.

    task = get_task("mumlp-w128-d3_fashionmnist-28x28x1", TaskSettings.from_config(cfg))
    params = task.init(key)
    loss = task.loss(params, batch, key)
    task.update_scales   # muP update scale per parameter (hidden_lr_mult / fan_in on hidden matrices, else 1)

Names are parsed (``mulo.tasks.names``): ``{model}-w{width}-d{depth}_{dataset}``; any positive width and depth.
A new family is one new module here that calls ``mulo.registry.register_task_family`` (found on first use).
"""

from __future__ import annotations

from typing import Any, Sequence

from mulo.tasks.base import MupMultipliers, ParamMeta, Task, update_scale, update_scales
from mulo.data.names import IMAGE_DATASETS, TEXT_PATTERNS
from mulo.tasks.names import GRAMMAR, TaskSpec, parse_task_name, split_task_names
from mulo.tasks.settings import TaskSettings


def __getattr__(name: str):
    if name == "MODELS":  # the registered task models (mulo.registry), looked up when asked for
        from mulo.registry import task_models

        return task_models()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build(spec: TaskSpec, settings: TaskSettings, dataset: Any) -> Task:
    return spec.task_family.build(spec, settings, dataset)  # the family's registered constructor


def get_task(name: str, settings: TaskSettings | None = None) -> Task:
    """The task called ``name`` (one name; see ``get_tasks`` for comma lists). Cheap: no data is read."""
    from mulo.data import get_dataset

    settings = settings or TaskSettings()
    spec = parse_task_name(name, d_head=settings.d_head)
    return _build(spec, settings, get_dataset(spec.dataset, settings))


def get_tasks(names: str | Sequence[str], settings: TaskSettings | None = None) -> list[Task]:
    """Tasks for ``"a,b"`` or ``["a", "b"]`` (multi-task). Tasks on the same dataset share one dataset object, so
    its data is loaded once."""
    from mulo.data import get_dataset

    settings = settings or TaskSettings()
    specs = [parse_task_name(n, d_head=settings.d_head) for n in split_task_names(names)]
    datasets: dict[str, Any] = {}
    tasks = []
    for spec in specs:
        if spec.dataset not in datasets:
            datasets[spec.dataset] = get_dataset(spec.dataset, settings)
        tasks.append(_build(spec, settings, datasets[spec.dataset]))
    return tasks


def with_width(name: str, width: int, d_head: int = 64) -> str:
    """``name`` with its width replaced (validated)."""
    return parse_task_name(parse_task_name(name, d_head=d_head).with_width(width).name, d_head=d_head).name


__all__ = ["get_task", "get_tasks", "with_width", "TaskSettings", "TaskSpec", "parse_task_name", "split_task_names",
           "ParamMeta", "MupMultipliers", "Task", "update_scale", "update_scales", "GRAMMAR", "MODELS",
           "IMAGE_DATASETS", "TEXT_PATTERNS"]
