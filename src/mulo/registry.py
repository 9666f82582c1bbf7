"""Registries of the components (learned and hand-designed optimizers, meta-gradient estimators, truncation
schedules) and task families: the one list of what exists, read by every other module.

A module that defines a component registers it where it is defined, with the frozen dataclass of its
hyper-parameters (``mulo.hparams``: the keys of its config section, with defaults, bounds and help)::

    register_learned(LearnedSpec(name="my_lo", hparams=MyHParams, build=..., is_mup=True))
    register_hand_designed(Component(name="lion", hparams=LionHParams, build=...))
    register_estimator(Component(name="pes", hparams=EstimatorHParams, build=PES))
    register_task_family(TaskFamily(name="vit", models={"muvit": True, "vit": False}, dataset_kind="image",
                                    build=...))

and nothing else has to change: the config's sections (``SECTIONS``: ``lo``, ``optimizer``, ``estimator``,
``truncation``) and choices, run names, θ files, meta-test's LO loading and the task-name grammar look names up here.
The registries are found by *discovery* on first use: every module of the registry's packages whose source calls its
``register_...(`` function is imported, so a new file in those packages is picked up without editing any other
module; other modules (and code outside mulo, e.g. a test file) register by calling the same functions.

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
from mulo.hparams import Key, field_defaults, make_hparams, section_schema

# ---- the accepted values of the components' options: each tuple is the one list, read by the config schema (its
# choices, so `--help` and validation import no JAX) and by the module that implements the choice (named after each)
LO_IMPLS = ("reference", "fused", "pallas")  # lo_impl: mulo.optimizers.adafac_mlp (each LO accepts a subset)
EPS_SCALINGS = ("none", "fan_in")  # lo_eps_scaling: mulo.optimizers.adafac_mlp / features.norm_eps
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


@dataclass(frozen=True, kw_only=True)
class Component:
    """One registered component that owns a config section (``SECTIONS``): a hand-designed optimizer, a learned
    optimizer, a gradient estimator or a truncation schedule.

    * ``hparams``: its frozen hyper-parameter dataclass; the fields declared with ``mulo.hparams.hparam()`` are the
      section's keys (``schema()``), with their defaults and help.
    * ``hparam_defaults``: this registered name's own defaults over the dataclass's (two names can share a class:
      ``small_fc_mlp`` steps 0.001, ``mup_small_fc_mlp`` 0.01).
    * ``build``: the object from an ``hparams`` instance (``hparams_of(section values)``); its other arguments depend
      on the section (``SECTIONS``'s comment).
    """

    name: str
    build: Callable[..., Any]
    hparams: type | None = None
    help: str = ""
    hparam_defaults: Mapping[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Key]:
        """The section's keys for this component (without ``name``; see ``section_keys``)."""
        return section_schema(self.hparams) if self.hparams is not None else {}

    def defaults(self) -> dict[str, Any]:
        """Key -> default value for this registered name."""
        if self.hparams is None:
            return {}
        return {**field_defaults(self.hparams), **{k: v for k, v in self.hparam_defaults.items()
                                                    if k in self.schema()}}

    def hparams_of(self, values: Mapping[str, Any] | None = None) -> Any:
        """The ``hparams`` instance for a section's values (missing keys: this name's defaults; None for a key that is
        not optional: the default)."""
        if self.hparams is None:
            raise RegistryError(f"{self.name!r} declares no hyper-parameter dataclass")
        return make_hparams(self.hparams, values or {}, self.hparam_defaults)


@dataclass(frozen=True, kw_only=True)
class LearnedSpec(Component):
    """One learned optimizer (section ``lo``).

    * ``build(hparams, impl: str)`` -> the LO object (it has ``name``, ``hparams`` with ``to_dict()``,
      ``init_theta(key)``, ``opt_fn(theta, update_scales)``, ``uses_mup``); ``hparams``: an instance of the
      ``hparams`` class or the dict stored in θ files.
    * ``implementations``: the accepted values of ``lo.impl`` (a subset of ``LO_IMPLS``); ``default_impl`` is one.
    * ``config_keys``: today's flat config key -> hyper-parameter name (aliases of the section keys, and the keys a θ
      file overrides at meta-test).
    * ``hparams_from_config(cfg)`` -> the θ-file dict from the flat config keys; None: read through ``config_keys``.
    * ``label_key``: the flat config key whose value follows the name in run names (``mup_small_fc_mlp32``), or None;
      ``label_hparam`` is its hyper-parameter name.
    * ``is_mup``: whether the LO multiplies its steps by the task's μP update scales.
    """

    hparams_from_config: Callable[[Any], dict] | None = None
    config_keys: Mapping[str, str] = field(default_factory=dict)
    label_key: str | None = None
    is_mup: bool = False
    implementations: tuple[str, ...] = ("reference", "fused", "pallas")
    default_impl: str = "fused"

    @property
    def label_hparam(self) -> str | None:
        return self.config_keys.get(self.label_key) if self.label_key else None

    def from_config(self, cfg: Any, impl: str = "fused") -> Any:
        if self.hparams_from_config is not None:
            return self.build(self.hparams_from_config(cfg), impl)
        get = (lambda k: cfg[k]) if hasattr(cfg, "__getitem__") else (lambda k: getattr(cfg, k))
        return self.build(self.hparams_of({hp: get(key) for key, hp in self.config_keys.items()}), impl)


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
HAND_OPTIMIZERS: Registry[Component] = Registry("hand-designed optimizer", ("mulo.optimizers",),
                                                "register_hand_designed(")
ESTIMATORS: Registry[Component] = Registry("gradient estimator", ("mulo.meta",), "register_estimator(")
TRUNCATIONS: Registry[Component] = Registry("truncation schedule", ("mulo.meta",), "register_truncation(")
TASK_FAMILIES: Registry[TaskFamily] = Registry("task family", ("mulo.tasks",), "register_task_family(")

# config section -> the registry whose entry its ``name`` picks. The builders (paper side, no config):
#   lo:         spec.build(hparams, impl) -> the LearnedOptimizer
#   optimizer:  spec.build(hparams, task, num_steps) -> Optimizer (hand-designed; name "lo" (LO_CHOICE) means the
#               `lo` section's learned optimizer instead)
#   estimator:  spec.build(hparams) -> an estimator (mulo.meta.estimators: has num_pairs, std, trunc_length)
#   truncation: spec.build(hparams, max_length) -> a mulo.meta.truncation.TruncationSchedule (max_length: the run's
#               num_inner_steps)
SECTIONS: dict[str, Registry] = {"lo": LEARNED_OPTIMIZERS, "optimizer": HAND_OPTIMIZERS, "estimator": ESTIMATORS,
                                 "truncation": TRUNCATIONS}
LO_CHOICE = "lo"  # optimizer.name that means "the learned optimizer of the lo section"


def names(section: str) -> tuple[str, ...]:
    """The registered names of a section's components (``optimizer``: the hand-designed ones, without LO_CHOICE)."""
    return _section(section).names()


def component(section: str, name: str) -> Component:
    """The component ``name`` of ``section``; ConfigError (one line) naming the accepted ones otherwise."""
    entry = _section(section).get(name)
    if entry is None:
        accepted = names(section) + ((LO_CHOICE,) if section == "optimizer" else ())
        raise ConfigError(f"unknown {section}.name {name!r}; expected one of {', '.join(accepted)}")
    return entry


def section_keys(section: str, name: str) -> dict[str, Key]:
    """Every key of ``section`` when its name is ``name``: ``name`` (choices: the registry), ``impl`` for ``lo``
    (choices: the LO's implementations), then the component's hyper-parameters."""
    choices = LazyNames(lambda: names(section) + ((LO_CHOICE,) if section == "optimizer" else ()))
    keys = {"name": Key("str", f"which {_section(section).kind}", choices=choices)}
    if section == "optimizer" and name == LO_CHOICE:
        return keys
    spec = component(section, name)
    if isinstance(spec, LearnedSpec):
        keys["impl"] = Key("str", "how the LO computes its per-parameter MLP (the same function): reference (plain "
                           "matmuls, the oracle), fused (one XLA elementwise loop), pallas (a Pallas kernel)",
                           choices=spec.implementations)
    return {**keys, **spec.schema()}


def _section(section: str) -> Registry:
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r}; expected one of {', '.join(SECTIONS)}")
    return SECTIONS[section]


def register_hand_designed(spec: Component) -> Component:
    """Add a hand-designed optimizer (``optimizer`` section)."""
    if spec.name == LO_CHOICE:
        raise RegistryError(f"{LO_CHOICE!r} is reserved: optimizer.name={LO_CHOICE} means the lo section's LO")
    return HAND_OPTIMIZERS.register(spec.name, spec)


def register_estimator(spec: Component) -> Component:
    """Add a meta-gradient estimator (``estimator`` section)."""
    return ESTIMATORS.register(spec.name, spec)


def register_truncation(spec: Component) -> Component:
    """Add a truncation schedule (``truncation`` section)."""
    return TRUNCATIONS.register(spec.name, spec)


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


def hand_names() -> tuple[str, ...]:
    return HAND_OPTIMIZERS.names()


def is_hand_designed(name: str) -> bool:
    return HAND_OPTIMIZERS.get(name) is not None


def optimizer_names() -> tuple[str, ...]:
    """Every accepted value of the flat config key ``optimizer``: hand-designed, then registered learned ones."""
    return hand_names() + learned_names()


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
HAND_DESIGNED = LazyNames(hand_names)  # the registered hand-designed optimizers (sgd, adam, adamw, muadam, ...)
ESTIMATOR_CHOICES = LazyNames(lambda: names("estimator"))  # pes, es, ...
TRUNCATION_CHOICES = LazyNames(lambda: names("truncation"))  # constant, log_uniform, ...
