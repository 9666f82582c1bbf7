"""Optimizers: hand-designed (optax) and learned, all behind ``mulo.optimizers.base.Optimizer``."""

from __future__ import annotations

from typing import Any, Mapping

from mulo.errors import ConfigError
from mulo.optimizers.base import LearnedOptimizer, Optimizer
from mulo.optimizers.adafac_mlp import AdafacHParams, AdafacMLPLO, hparams_from_config, num_meta_params
from mulo.optimizers.export import as_optax
from mulo.optimizers.hand_designed import adam, adamw, from_optax, lr_schedule, muadam, sgd
from mulo.optimizers.theta_io import learned_from_hparams, load_theta, save_theta
from mulo.registry import HAND_DESIGNED, is_learned, learned_names, learned_spec


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
    """The learned optimizer named by ``cfg.optimizer`` (a registered one, ``mulo.registry``) with hyper-parameters
    from its config keys (the Adafactor-MLP LOs: hidden_size, adafac_step_mult (None: 0.01 for mup_small_fc_mlp,
    0.001 for small_fc_mlp), adafac_exp_mult, lo_clip_grad and lo_eps_scaling) and the implementation ``lo_impl``.
    Use it to meta-train; to meta-test, ``load_theta`` restores the LO with the hyper-parameters it was trained with."""
    name = _get(cfg, "optimizer")
    if not is_learned(name):
        raise ConfigError(f"optimizer {name!r} is not a learned optimizer; expected one of {learned_names()}")
    spec = learned_spec(name)
    for key in spec.config_keys:
        _get(cfg, key)
    return spec.from_config(cfg, impl=_get(cfg, "lo_impl"))


def build_optimizer(cfg: Any, task: Any) -> Optimizer:
    """The hand-designed optimizer named by ``cfg.optimizer`` for ``task`` (MuAdam reads ``task.update_scales``).

    Keys read: optimizer, learning_rate, beta1, beta2, weight_decay, sgd_momentum, warmup_steps, cosine_decay,
    end_lr_ratio, num_inner_steps. Learned optimizers need meta-parameters: use ``build_learned`` / ``load_theta``
    and ``lo.opt_fn(theta, task.update_scales)``.
    """
    name = _get(cfg, "optimizer")
    if is_learned(name):
        raise ConfigError(f"optimizer {name!r} is a learned optimizer: build it with mulo.optimizers.load_theta("
                          f"<theta file>) and lo.opt_fn(theta, task.update_scales)")
    if name not in HAND_DESIGNED:
        raise ConfigError(f"unknown optimizer {name!r}; expected one of {HAND_DESIGNED + learned_names()}")
    lr = lr_schedule(_get(cfg, "learning_rate"), warmup_steps=_get(cfg, "warmup_steps"),
                     cosine_decay=_get(cfg, "cosine_decay"), end_lr_ratio=_get(cfg, "end_lr_ratio"),
                     num_steps=_get(cfg, "num_inner_steps"))
    if name == "sgd":
        return sgd(lr, momentum=_get(cfg, "sgd_momentum"))
    b1, b2 = _get(cfg, "beta1"), _get(cfg, "beta2")
    if name == "adam":
        return adam(lr, b1=b1, b2=b2)
    if name == "adamw":
        return adamw(lr, b1=b1, b2=b2, weight_decay=_get(cfg, "weight_decay"))
    return muadam(lr, task.update_scales, b1=b1, b2=b2)


__all__ = ["Optimizer", "LearnedOptimizer", "build_optimizer", "build_learned", "sgd", "adam", "adamw", "muadam",
           "from_optax", "lr_schedule", "HAND_DESIGNED", "LEARNED", "AdafacHParams", "AdafacMLPLO",
           "learned_from_hparams", "save_theta", "load_theta", "as_optax", "num_meta_params"]
