"""Optimizers: hand-designed (optax) and learned, all behind ``mulo.optimizers.base.Optimizer``.

Each one is registered (``mulo.registry``) by the module that defines it, with its hyper-parameter dataclass: the
hand-designed ones in the ``optimizer`` section (``sgd``, ``adam``, ``adamw``, ``muadam``), the learned ones in the
``lo`` section (``adafac_mlp``, ``velo``). Build them from their sections with ``mulo.registry.component``:

    spec = component("optimizer", "muadam")
    opt = spec.build(spec.hparams_of({"learning_rate": 3e-3}), task, num_steps)
    spec = component("lo", "mup_small_fc_mlp")
    lo = spec.build(spec.hparams_of({"hidden_size": 32}), "fused")
"""

from __future__ import annotations

from typing import Any, Mapping

from mulo.errors import ConfigError
from mulo.optimizers.adafac_mlp import AdafacHParams, AdafacMLPLO, num_meta_params
from mulo.optimizers.adam import adam
from mulo.optimizers.adamw import adamw
from mulo.optimizers.base import LearnedOptimizer, Optimizer
from mulo.optimizers.export import as_optax
from mulo.optimizers.hand_designed import from_optax, lr_schedule
from mulo.optimizers.muadam import muadam
from mulo.optimizers.sgd import sgd
from mulo.optimizers.theta_io import learned_from_hparams, load_theta, save_theta
from mulo.registry import LO_CHOICE, Component, component, hand_names, is_learned, learned_names, learned_spec


def __getattr__(name: str):
    if name == "LEARNED":  # the registered learned optimizers (mulo.registry), looked up when asked for
        return learned_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        if key not in cfg:
            raise ConfigError(f"config key {key!r} is missing")
        return cfg[key]
    try:
        return getattr(cfg, key)
    except AttributeError:
        raise ConfigError(f"config key {key!r} is missing") from None


def build_learned(cfg: Any) -> Any:
    """The learned optimizer named by the flat config key ``optimizer`` (a registered one) with hyper-parameters
    from its flat config keys (its spec's ``config_keys``) and the implementation ``lo_impl``: the compatibility path
    of today's flat configs (sections: ``component("lo", name).build(hparams, impl)``)."""
    name = _get(cfg, "optimizer")
    if not is_learned(name):
        raise ConfigError(f"optimizer {name!r} is not a learned optimizer; expected one of {learned_names()}")
    spec = learned_spec(name)
    for key in spec.config_keys:
        _get(cfg, key)
    return spec.from_config(cfg, impl=_get(cfg, "lo_impl"))


# today's flat config keys of the hand-designed optimizers -> their section keys (the compatibility path below;
# mulo.app.aliases maps them for configs)
FLAT_HAND_KEYS = {"learning_rate": "learning_rate", "beta1": "b1", "beta2": "b2", "weight_decay": "weight_decay",
                  "sgd_momentum": "momentum", "warmup_steps": "warmup_steps", "cosine_decay": "cosine_decay",
                  "end_lr_ratio": "end_lr_ratio"}


def hand_designed_from_config(cfg: Any) -> tuple[Component, Any]:
    """(registered spec, hyper-parameters) of the hand-designed optimizer of ``cfg``: its ``optimizer`` section
    (a dict with ``name``) or today's flat keys (``optimizer`` the name, FLAT_HAND_KEYS the values)."""
    section = _get(cfg, "optimizer")
    if isinstance(section, Mapping):
        name, values = section.get("name"), {k: v for k, v in section.items() if k != "name"}
    else:
        name, values = section, None
    if is_learned(name) or name == LO_CHOICE:
        raise ConfigError(f"optimizer {name!r} is a learned optimizer: build it with mulo.optimizers.load_theta("
                          f"<theta file>) and lo.opt_fn(theta, task.update_scales)")
    if name not in hand_names():
        raise ConfigError(f"unknown optimizer {name!r}; expected one of {', '.join(hand_names() + learned_names())}")
    spec = component("optimizer", name)
    if values is None:
        keys = spec.schema()
        values = {hp: _get(cfg, flat) for flat, hp in FLAT_HAND_KEYS.items() if hp in keys}
    return spec, spec.hparams_of(values)


def build_optimizer(cfg: Any, task: Any) -> Optimizer:
    """The hand-designed optimizer of ``cfg`` (``hand_designed_from_config``) for ``task``, over ``num_inner_steps``
    steps. Learned optimizers need meta-parameters: ``load_theta`` and ``lo.opt_fn(theta, task.update_scales)``."""
    spec, hparams = hand_designed_from_config(cfg)
    return spec.build(hparams, task, _get(cfg, "num_inner_steps"))


__all__ = ["Optimizer", "LearnedOptimizer", "build_optimizer", "build_learned", "hand_designed_from_config", "sgd",
           "adam", "adamw", "muadam", "from_optax", "lr_schedule", "LEARNED", "AdafacHParams", "AdafacMLPLO",
           "learned_from_hparams", "save_theta", "load_theta", "as_optax", "num_meta_params"]
