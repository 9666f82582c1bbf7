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
from mulo.registry import is_learned, learned_names, learned_spec


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


__all__ = ["Optimizer", "LearnedOptimizer", "build_learned", "sgd",
           "adam", "adamw", "muadam", "from_optax", "lr_schedule", "LEARNED", "AdafacHParams", "AdafacMLPLO",
           "learned_from_hparams", "save_theta", "load_theta", "as_optax", "num_meta_params"]
