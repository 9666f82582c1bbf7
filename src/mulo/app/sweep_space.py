"""A sweep's search space (``mulo.app.commands.sweep``): ``sweep_config`` parsed and checked, each trial's values drawn
from it, and the Optuna sampler of its method."""

from __future__ import annotations

import math
from typing import Any, Mapping

from mulo.app.config import Config, option_key
from mulo.errors import ConfigError
from mulo.registry import SWEEP_METHODS as METHODS


def parse_sweep_config(cfg: Config) -> tuple[str, dict[str, Any]]:
    """(method, parameters) from ``cfg.sweep_config``, checked: every parameter a config key, every value valid."""
    sc = dict(cfg.sweep_config or {})
    if not sc:
        raise ConfigError("sweep_config is empty: set sweep_config = dict(method=..., parameters=dict(...)) in the "
                          "sweep's config file (see config/sweeps/sweep_muadam.py)")
    unknown = set(sc) - {"method", "parameters", "metric"}
    if unknown:
        raise ConfigError(f"unknown sweep_config entries {sorted(unknown)}: expected method, parameters")
    method = sc.get("method", "grid")
    if method not in METHODS:
        raise ConfigError(f"bad sweep_config.method {method!r}: expected one of {', '.join(METHODS)}")
    params = sc.get("parameters") or {}
    if not isinstance(params, Mapping) or not params:
        raise ConfigError("sweep_config.parameters is empty: expected dict(key=[values]) or dict(key=dict(low=, "
                          "high=, log=))")
    space: dict[str, Any] = {}
    for key, spec in params.items():
        try:  # a run-level key, a section's (optimizer.learning_rate) or today's flat key (learning_rate)
            kind = option_key(key).type
        except ConfigError:
            raise ConfigError(f"sweep_config.parameters: {key!r} is not a config key") from None
        if key in ("task", "optimizer", "optimizer.name", "lo.name", "seed", "sweep_config", "storage", "study_name",
                   "output_dir"):
            raise ConfigError(f"sweep_config.parameters: {key!r} cannot be swept")
        if isinstance(spec, (list, tuple)):
            values = list(spec)
            if not values:
                raise ConfigError(f"sweep_config.parameters.{key}: empty list of values")
            for v in values:
                cfg.replace(**{key: v})  # validates the value
            space[key] = values
        elif isinstance(spec, Mapping):
            if method == "grid":
                raise ConfigError(f"sweep_config.parameters.{key}: a grid sweep needs a list of values, not a range")
            if kind not in ("float", "int") or not {"low", "high"} <= set(spec):
                raise ConfigError(f"sweep_config.parameters.{key}: a range needs low and high for a numeric key")
            low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
            if not low < high or (log and low <= 0):
                raise ConfigError(f"sweep_config.parameters.{key}: need low < high (and low > 0 with log=True)")
            cfg.replace(**{key: low}), cfg.replace(**{key: high})
            space[key] = {"low": low, "high": high, "log": log, "type": kind}
        else:
            raise ConfigError(f"sweep_config.parameters.{key}: expected a list of values or dict(low=, high=)")
    return method, space


def grid_size(space: Mapping[str, Any]) -> int:
    return math.prod(len(v) for v in space.values())


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            out[key] = trial.suggest_categorical(key, spec)
        elif spec["type"] == "int":
            out[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=spec["log"])
        else:
            out[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=spec["log"])
    return out


def make_sampler(method: str, space: Mapping[str, Any], seed: int):
    import optuna

    if method == "grid":
        return optuna.samplers.GridSampler({k: list(v) for k, v in space.items()}, seed=seed)
    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)
