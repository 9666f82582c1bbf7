"""The config's component sections: ``optimizer``, ``lo``, ``estimator``, ``truncation`` (each a dict whose ``name``
picks a registered component, ``mulo.registry.SECTIONS``) and ``task_options`` (one fixed dataclass,
``mulo.tasks.settings.TaskOptions``). A section's keys, defaults and help are its component's hyper-parameter
dataclass (``mulo.registry.section_keys``); nothing here repeats them.

``resolve`` turns a section's merged entries into the complete, validated section; ``flat_value`` reads today's flat
key names (``hidden_size``, ``learning_rate``, ``num_tasks``, ...: ``mulo.app.aliases``) from the sections, so code
that still reads them gets the same values.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping

from mulo.app.aliases import FLAT_KEYS, FLAT_OPTIMIZER, flat_targets
from mulo.app.schema import check, key_text, short, suggest
from mulo.errors import CheckpointError, ConfigError
from mulo.hparams import Key, field_defaults, section_schema

SECTION_NAMES = ("optimizer", "lo", "estimator", "truncation", "task_options")
NAMED = ("optimizer", "lo", "estimator", "truncation")  # a `name` picks the component (mulo.registry.SECTIONS)


def _fixed(section: str) -> type:
    from mulo.tasks.settings import TaskOptions

    return {"task_options": TaskOptions}[section]


def component_names(section: str) -> tuple[str, ...]:
    """The accepted values of ``<section>.name`` (the registry's; ``optimizer`` also ``lo``)."""
    from mulo.registry import LO_CHOICE, names

    return names(section) + ((LO_CHOICE,) if section == "optimizer" else ())


def keys(section: str, name: str | None = None) -> dict[str, Key]:
    """The keys of ``section`` when its component is ``name`` (``name`` first, ``impl`` for ``lo``)."""
    if section not in NAMED:
        return section_schema(_fixed(section))
    from mulo.registry import section_keys

    return section_keys(section, name)


def defaults(section: str, name: str | None = None) -> dict[str, Any]:
    """The defaults of ``section``'s keys for the component ``name`` (its dataclass's, its registered name's own)."""
    if section not in NAMED:
        return field_defaults(_fixed(section))
    from mulo.registry import LO_CHOICE, LearnedSpec, component

    if section == "optimizer" and name == LO_CHOICE:
        return {}
    spec = component(section, name)
    return {**({"impl": spec.default_impl} if isinstance(spec, LearnedSpec) else {}), **spec.defaults()}


def all_keys(section: str) -> dict[str, tuple[Key, tuple[str, ...]]]:
    """Every key any component of ``section`` has: (the first one's Key, the components that have it). The command
    line parses ``--<section>.<key>`` with it before the section's component is known."""
    if section not in NAMED:
        return {k: (spec, ()) for k, spec in keys(section).items()}
    out: dict[str, tuple[Key, tuple[str, ...]]] = {}
    for name in component_names(section):
        for k, spec in keys(section, name).items():
            first, owners = out.get(k, (spec, ()))
            out[k] = (first, owners + ((name,) if k != "name" else ()))
    return out


def resolve(section: str, values: Any, droppable: Collection[str] = ()) -> dict[str, Any]:
    """The complete section (every key of its component, checked; missing ones at their defaults) from its merged
    entries. ``droppable``: entries that configured another component (set before a later layer changed ``name``) or
    came from today's flat keys; they are dropped when this component has no such key, any other unknown key is one
    line naming the accepted ones."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"bad value {short(values)} for config section '{section}': expected a dict, e.g. "
                          f"{section}=dict({'name=..., ' if section in NAMED else ''}...)")
    values = dict(values)
    name = None
    if section in NAMED:
        if values.get("name") is None:
            raise ConfigError(f"config section '{section}' has no name: expected one of "
                              f"{', '.join(component_names(section))}")
        name = check(f"{section}.name", Key("str", "", choices=component_names(section)), values["name"])
    accepted = keys(section, name)
    base = defaults(section, name)
    out: dict[str, Any] = {"name": name} if name is not None else {}
    for k, v in values.items():
        if k == "name":
            continue
        if k not in accepted:
            if k in droppable:
                continue
            what = f"{section} {name!r}" if name is not None else section
            raise ConfigError(f"unknown key '{section}.{key_text(k)}'{suggest(str(k), accepted)}: {what} accepts "
                              f"{', '.join(accepted)}")
        if v is None and not accepted[k].optional:  # older run configs wrote None for "the default"
            continue
        out[k] = check(f"{section}.{k}", accepted[k], v)
    return {k: out[k] if k in out else base.get(k) for k in accepted}


def flat_value(data: Mapping[str, Any], key: str) -> Any:
    """Today's flat key ``key`` read from the sections of ``data``; KeyError if it is none. A key the section's
    component does not have (``learning_rate`` when a learned optimizer runs) reads the default of the first
    component that has it, as the flat config had it."""
    if key == FLAT_OPTIMIZER:
        from mulo.registry import LO_CHOICE

        name = data["optimizer"]["name"]
        return data["lo"]["name"] if name == LO_CHOICE else name
    targets = flat_targets(key)
    if not targets:
        raise KeyError(key)
    from mulo.registry import LEARNED_OPTIMIZERS

    lo = LEARNED_OPTIMIZERS.get(data["lo"]["name"])
    for section, entry in targets:  # this config's components first; an LO's own flat key only if this LO reads it
        if entry in data[section] and (FLAT_KEYS.get(key) == (section, entry)
                                       or (lo is not None and lo.config_keys.get(key) == entry)):
            return data[section][entry]
    for section, entry in targets:
        for name in component_names(section):
            found = defaults(section, name)
            if entry in found:
                return found[entry]
    raise KeyError(key)


def build(cfg: Any, section: str, *args: Any) -> Any:
    """The object of ``cfg``'s section ``section``, built once by its registered component from the section's values:
    ``lo`` -> the learned optimizer (in its ``impl``), ``estimator`` -> the estimator, ``truncation`` -> the schedule
    (``args``: its max_length), ``optimizer`` -> a hand-designed optimizer (``args``: task, num_steps)."""
    from mulo.registry import component

    values = cfg.section(section)
    spec = component(section, values.pop("name"))
    impl = values.pop("impl", None)
    hparams = spec.hparams_of(values)
    return spec.build(hparams, impl) if section == "lo" else spec.build(hparams, *args)


MUP_RECORD = ("mup_input_mult", "mup_output_mult", "mup_hidden_lr_mult")  # task_options recorded with a hand optimizer


def optimizer_source(cfg: Any, download_dir: Any = None, api_factory: Any = None) -> Any:
    """The optimizer of ``cfg``'s ``optimizer`` and ``lo`` sections (``mulo.evaluate.lo_source.optimizer_source``):
    a hand-designed one built from its section, or a learned one from ``checkpoint`` / ``wandb_checkpoint_id``
    (downloaded into ``download_dir``, by default ``<output_dir>/wandb_checkpoints``)."""
    from pathlib import Path

    from mulo.evaluate import lo_source

    options = cfg.section("task_options")
    return lo_source.optimizer_source(
        cfg.section("optimizer"), cfg.section("lo"), num_steps=cfg.num_inner_steps, checkpoint=cfg.checkpoint,
        wandb_checkpoint_id=cfg.wandb_checkpoint_id,
        download_dir=download_dir if download_dir is not None else Path(cfg.output_dir) / "wandb_checkpoints",
        api_factory=api_factory or lo_source.wandb_api, record={k: options[k] for k in MUP_RECORD})


def with_checkpoint_hparams(cfg: Any, source: Any) -> Any:
    """``cfg`` with the ``lo`` section's hyper-parameters that θ overrides (``lo_source.lo_keys``: hidden_size,
    step_mult, exp_mult, clip_grad, eps_scaling for the Adafactor-MLP LOs) set from the checkpoint's, so the run name
    and the saved config.py say what was actually used."""
    from mulo.evaluate.lo_source import lo_keys

    hp = source.info.get("hparams") or {}
    changes = {key: hp[key] for key in lo_keys(source.name).values() if key in hp}
    try:
        return cfg.replace(lo=changes)
    except ConfigError:
        return cfg


def init_theta(cfg: Any, lo: Any) -> Any:
    """The θ of ``cfg.init_theta`` (a warm start for meta-training ``lo``), or None when it is not set. Its learned
    optimizer and hyper-parameters must be ``lo``'s (the ``lo`` section's): ConfigError naming the first differences
    otherwise, since θ means something else under other hyper-parameters."""
    if not cfg.init_theta:
        return None
    from mulo.evaluate import lo_source

    try:
        source = lo_source.optimizer_source({"name": "lo"}, cfg.section("lo"), num_steps=cfg.num_inner_steps,
                                            checkpoint=cfg.init_theta)
    except (ConfigError, CheckpointError) as err:
        raise type(err)(f"init_theta: {err}") from None
    learned, theta = source.learned
    mine, theirs = lo.hparams.to_dict(), learned.hparams.to_dict()
    diff = [k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    if diff:
        shown = ", ".join(f"lo.{k}={theirs.get(k)!r} (config: {mine.get(k)!r})" for k in diff[:3])
        raise ConfigError(f"init_theta {cfg.init_theta} was meta-trained with other hyper-parameters: {shown}; set "
                          f"them in the lo section to warm-start from it")
    return theta


def meta_trainer(cfg: Any, tasks: Any, lo: Any = None, placement: Any = None) -> Any:
    """The meta-trainer (``mulo.meta.trainer.MetaTrainer``) of ``cfg``: its run-level settings, the estimator and the
    truncation schedule built from their sections, and ``lo`` (default: built from the ``lo`` section)."""
    from mulo.meta.settings import TrainSettings
    from mulo.meta.trainer import MetaTrainer

    lo = lo if lo is not None else build(cfg, "lo")
    return MetaTrainer(TrainSettings.from_config(cfg), tasks, lo, build(cfg, "estimator"),
                       build(cfg, "truncation", cfg.num_inner_steps), placement, init_theta(cfg, lo))
