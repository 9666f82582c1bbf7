"""Registries of learned optimizers and task families: the one list of what exists, read by every other module.

A module that defines a learned optimizer or a task family registers it where it is defined::

    register_learned(LearnedSpec(name="my_lo", build=..., hparams_from_config=..., config_keys={...}, is_mup=True))
    register_task_family(TaskFamily(name="vit", models={"muvit": True, "vit": False}, dataset_kind="image",
                                    build=...))

and nothing else has to change: the config's ``optimizer`` choices, run names, θ files, meta-test's LO loading and
the task-name grammar look names up here. The registries are found by *discovery* on first use: every module of
``mulo.optimizers`` (``mulo.tasks``) whose source calls ``register_learned(`` (``register_task_family(``) is
imported, so a new file in those packages is picked up without editing any other module; other modules (and code
outside mulo, e.g. a test file) register by calling the same functions.

Registries are the one accepted piece of module-level state: append-only, and a name registered twice is an error.
This module imports no JAX (config validation and ``--help`` read it cheaply; discovery imports the registering
modules only when a name is looked up).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Sequence, TypeVar

from mulo.errors import ConfigError

# hand-designed optimizers are optax transformations built from config keys (mulo.optimizers.hand_designed), not
# registered objects: this is the one list of their names
HAND_DESIGNED = ("sgd", "adam", "adamw", "muadam")

# ---- the accepted values of the components' options: each tuple is the one list, read by the config schema (its
# choices, so `--help` and validation import no JAX) and by the module that implements the choice (named after each)
LO_IMPLS = ("reference", "fused", "pallas")  # lo_impl: mulo.optimizers.adafac_mlp (each LO accepts a subset)
EPS_SCALINGS = ("none", "fan_in")  # lo_eps_scaling: mulo.optimizers.adafac_mlp / features.norm_eps
ESTIMATORS = ("pes", "es")  # gradient_estimator: mulo.meta.estimators
TRUNCATION_KINDS = ("constant", "log_uniform")  # truncation_schedule: mulo.meta.truncation
META_LOSS_SPLITS = ("train", "same_data", "meta_valid")  # meta_loss_split: mulo.meta.unroll
META_LOSS_NORMS = ("none", "init_loss")  # meta_loss_norm: mulo.meta.mixture
SCHEDULE_KEYS = ("init_value", "peak_value", "warmup_steps", "decay_steps", "end_value", "exponent")  # mulo.meta.outer
DISTRIBUTED_MODES = ("auto", "on", "off")  # distributed: mulo.parallel
ON_DEVICE_MODES = ("auto", "on", "off")  # data_on_device: mulo.data.transfer
SWEEP_METHODS = ("grid", "tpe", "random")  # sweep_config.method: mulo.app.commands.sweep
WANDB_MODES = ("online", "offline", "disabled")  # wandb_mode and the WANDB_MODE variable: mulo.app.runtime
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16")  # jax_default_matmul_precision: mulo.app.runtime


class RegistryError(ConfigError):
    """A registration that breaks the registry's rules (a duplicate name, a bad entry)."""


@dataclass(frozen=True)
class LearnedSpec:
    """One learned optimizer.

    * ``build(hparams: dict, impl: str)`` -> the LO object (it has ``name``, ``hparams`` with ``to_dict()``,
      ``init_theta(key)``, ``opt_fn(theta, update_scales)``, ``uses_mup``); ``hparams`` as stored in θ files.
    * ``hparams_from_config(cfg)`` -> that dict from the config keys (meta-train).
    * ``config_keys``: config key -> hyper-parameter name, for the keys a θ file overrides at meta-test.
    * ``label_key``: the config key whose value follows the name in run names (``mup_small_fc_mlp32``), or None.
    * ``is_mup``: whether the LO multiplies its steps by the task's μP update scales.
    """

    name: str
    build: Callable[[Mapping[str, Any], str], Any]
    hparams_from_config: Callable[[Any], dict]
    config_keys: Mapping[str, str] = field(default_factory=dict)
    label_key: str | None = None
    is_mup: bool = False
    help: str = ""

    def from_config(self, cfg: Any, impl: str = "fused") -> Any:
        return self.build(self.hparams_from_config(cfg), impl)


@dataclass(frozen=True)
class TaskFamily:
    """One task family: ``{model}-w{width}-d{depth}[options]_{dataset}`` for each of its ``models`` (model name ->
    μP or not) on a dataset of ``dataset_kind`` ("image" or "text", ``mulo.data.names``; None: ``check`` decides).

    * ``build(spec, settings, dataset)`` -> the Task (``spec``: a ``mulo.tasks.names.TaskSpec``);
    * ``check(spec, d_head)`` raises ``TaskError`` (one line) for a name the family cannot build (e.g. a width that
      is not a multiple of d_head), or is None;
    * ``takes_options``: whether the model part may go on after the depth (``-p4-h2``: ``spec.options``);
    * ``plural``: how error lines call the family's models ("MLPs take an image dataset, ...").
    """

    name: str
    models: Mapping[str, bool]
    dataset_kind: str | None
    build: Callable[[Any, Any, Any], Any]
    check: Callable[[Any, int], None] | None = None
    takes_options: bool = False
    plural: str = ""
    help: str = ""


T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry, append-only; discovers the registering modules of ``packages`` on first lookup."""

    def __init__(self, kind: str, packages: tuple[str, ...], marker: str):
        self.kind = kind
        self._packages = packages
        self._marker = marker
        self._entries: dict[str, T] = {}
        self._order: dict[str, tuple[str, int]] = {}
        self._discovered = False
        self._lock = threading.RLock()

    def register(self, name: str, entry: T) -> T:
        with self._lock:
            if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
                raise RegistryError(f"bad {self.kind} name {name!r}: expected letters, digits and '_'")
            old = self._entries.get(name)
            if old is not None and old is not entry:
                raise RegistryError(f"{self.kind} {name!r} is already registered ({_where(old)}); choose another "
                                    f"name")
            # listed by the defining module, then in registration order: the same order whichever module happened
            # to be imported first
            self._order[name] = (str(getattr(getattr(entry, "build", None), "__module__", "")), len(self._order))
            self._entries = dict(sorted({**self._entries, name: entry}.items(), key=lambda kv: self._order[kv[0]]))
            return entry

    def _discover(self) -> None:
        with self._lock:
            if self._discovered:
                return
            self._discovered = True  # set first: the modules imported below register (and may look names up)
            for package in self._packages:
                for module in _registering_modules(package, self._marker):
                    importlib.import_module(module)

    def get(self, name: str) -> T | None:
        if name not in self._entries:
            self._discover()
        return self._entries.get(name)

    def names(self) -> tuple[str, ...]:
        self._discover()
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._discover()
        return iter(list(self._entries.items()))


def _where(entry: Any) -> str:
    build = getattr(entry, "build", None)
    return f"by {getattr(build, '__module__', '?')}"


def _registering_modules(package: str, marker: str) -> list[str]:
    """The modules of ``package`` whose source text calls ``marker`` (so unrelated modules are not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    out = []
    for info in pkgutil.iter_modules(spec.submodule_search_locations, package + "."):
        if info.ispkg:
            continue
        sub = importlib.util.find_spec(info.name)
        origin = getattr(sub, "origin", None)
        try:
            with open(origin, encoding="utf-8") as f:
                text = f.read()
        except (OSError, TypeError, UnicodeDecodeError):
            continue
        if marker in text:
            out.append(info.name)
    return sorted(out)


LEARNED_OPTIMIZERS: Registry[LearnedSpec] = Registry("learned optimizer", ("mulo.optimizers",), "register_learned(")
TASK_FAMILIES: Registry[TaskFamily] = Registry("task family", ("mulo.tasks",), "register_task_family(")


def register_learned(spec: LearnedSpec) -> LearnedSpec:
    """Add a learned optimizer (a name registered twice is a RegistryError)."""
    return LEARNED_OPTIMIZERS.register(spec.name, spec)


def register_task_family(family: TaskFamily) -> TaskFamily:
    """Add a task family; its model names must be new too (a model belongs to one family)."""
    with TASK_FAMILIES._lock:
        for model in family.models:
            owner = model_family(model, discover=False)
            if owner is not None and owner is not family:
                raise RegistryError(f"task model {model!r} of family {family.name!r} is already registered by "
                                    f"family {owner.name!r}")
        return TASK_FAMILIES.register(family.name, family)


def learned_names() -> tuple[str, ...]:
    return LEARNED_OPTIMIZERS.names()


def learned_spec(name: str) -> LearnedSpec:
    """The registered learned optimizer ``name``; ConfigError (one line) naming the accepted ones otherwise."""
    spec = LEARNED_OPTIMIZERS.get(name)
    if spec is None:
        raise ConfigError(f"unknown learned optimizer {name!r}; expected one of {', '.join(learned_names())}")
    return spec


def is_learned(name: str) -> bool:
    return LEARNED_OPTIMIZERS.get(name) is not None


def optimizer_names() -> tuple[str, ...]:
    """Every accepted value of the config key ``optimizer``: hand-designed, then registered learned ones."""
    return HAND_DESIGNED + learned_names()


def learned_config_keys() -> tuple[str, ...]:
    """The config keys the registered learned optimizers read (each one's ``config_keys``, registry order, each key
    once): hidden_size, ..., lo_eps_scaling of the Adafactor-MLP LOs, VeLO's velo_* keys, a new LO's keys."""
    return tuple(dict.fromkeys(key for _, spec in LEARNED_OPTIMIZERS.items() for key in spec.config_keys))


def model_family(model: str, discover: bool = True) -> TaskFamily | None:
    """The family that registered the task model ``model`` (``mumlp`` -> the MLP family), or None."""
    entries = TASK_FAMILIES.items() if discover else iter(list(TASK_FAMILIES._entries.items()))
    for _, family in entries:
        if model in family.models:
            return family
    return None


def task_models() -> tuple[str, ...]:
    """Every registered task model name, family by family."""
    return tuple(m for _, family in TASK_FAMILIES.items() for m in family.models)


class LazyNames(Sequence):
    """A tuple of names computed when first read (``names()`` looked up at each access): the config schema's
    ``optimizer`` choices, so that importing mulo.app.config imports no optimizer module."""

    def __init__(self, names: Callable[[], tuple[str, ...]]):
        self._names = names

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __repr__(self) -> str:
        return repr(self._names())


OPTIMIZER_CHOICES = LazyNames(optimizer_names)
