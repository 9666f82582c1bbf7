"""Load and validate run configurations.

A run's configuration is built in this order, each layer overriding the one before:

1. ``config/base.py`` (every key with its default),
2. the ``--config`` file (an MMEngine Python config; ``_base_`` inheritance merges dicts recursively),
3. ``--cfg-options a.b=1 ...`` (nested keys),
4. ``--key value`` options on the command line.

Only keys that the user actually wrote are merged, so a CLI default never overwrites a value from a config file (a
bug of the reference, whose ``store_true`` flags always clobbered config values).

Every key is declared once in ``SCHEMA`` with its type, accepted values and help. Unknown keys, wrong types and bad
values raise ``ConfigError`` with one line naming the key, the bad value and what is accepted.
"""

from __future__ import annotations

import ast
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from mulo import pretrained
from mulo.errors import ConfigError, one_line
from mulo.hparams import Key  # noqa: F401  (moved to mulo.hparams; re-exported for the config's users)
from mulo.registry import (DISTRIBUTED_MODES, EPS_SCALINGS, ESTIMATOR_CHOICES, LO_IMPLS, MATMUL_PRECISIONS,
                           META_LOSS_NORMS, META_LOSS_SPLITS, ON_DEVICE_MODES, OPTIMIZER_CHOICES, SCHEDULE_KEYS,
                           SWEEP_METHODS, TRUNCATION_CHOICES, WANDB_MODES)

REPO_ROOT = Path(__file__).resolve().parents[3]
BASE_CONFIG = REPO_ROOT / "config" / "base.py"


_POS = 1e-300  # "strictly positive" lower bound for floats
# string keys where an empty (or blank) value means nothing sensible: a path "" is the working directory, a name ""
# names nothing (optional keys take none instead)
NON_EMPTY = ("output_dir", "data_dir", "fashion_mnist_dir", "tinyshakespeare_path", "vocab_path", "checkpoint",
             "wandb_checkpoint_id", "storage", "study_name", "wandb_project", "wandb_entity", "compilation_cache_dir",
             "coordinator_address", "cluster_detection_method")
INT_MAX = 2**31 - 1  # every integer fits int32 (step counters, PRNG seeds: JAX folds larger seeds to 32 bits)
MAX_STR = 4096  # longer strings are a pasted mistake, not a name or a path

# the entries of `schedule`, in the order of SCHEDULE_KEYS (mulo.meta.outer reads them): init_value, peak_value,
# warmup_steps, decay_steps, end_value, exponent
SCHEDULE_FIELDS: dict[str, Key] = dict(zip(SCHEDULE_KEYS, (
    Key("float", "lr at step 0", min=0.0),
    Key("float", "lr at the end of the warmup", min=_POS),
    Key("int", "linear warmup steps", min=0),
    Key("int", "total steps of warmup + cosine decay", min=1),
    Key("float", "lr at the end of the cosine", min=0.0),
    Key("float", "cosine exponent", min=_POS),
), strict=True))
SWEEP_FIELDS: dict[str, Key] = {
    "method": Key("str", "search method", choices=SWEEP_METHODS),
    "parameters": Key("dict", "config key -> list of values (grid) or dict(low=, high=, log=)"),
    "metric": Key("str", "informational: the objective is always the tail-mean train loss"),
}

SCHEMA: dict[str, Key] = {
    # what to run
    "optimizer": Key("str", "optimizer: a hand-designed one (sgd, adam, adamw, muadam) or a learned one (registered "
                            "in mulo.registry: small_fc_mlp, mup_small_fc_mlp, ...)", choices=OPTIMIZER_CHOICES),
    "task": Key("list[str]", "task name(s), e.g. mumlp-w128-d3_fashionmnist-28x28x1; a comma list = multi-task"),
    "seed": Key("int", "random seed (init, data order, perturbations)", min=0),
    "name_suffix": Key("str", "appended to the run name"),
    "output_dir": Key("str", "where run directories are created"),
    # tasks
    "mup_input_mult": Key("float", "muP forward multiplier of the input layer's output", min=_POS),
    "mup_output_mult": Key("float", "muP multiplier of the logits (times 1/fan_in of the readout)", min=_POS),
    "mup_hidden_lr_mult": Key("float", "muP update scale of hidden matrices (times 1/fan_in)", min=_POS),
    "d_head": Key("int", "transformer head dimension (width must be divisible by it)", min=1),
    # data
    "data_dir": Key("str", "TFDS data directory (None: TFDS default)", optional=True),
    "tfds_download": Key("bool", "let TFDS download datasets that are not prepared"),
    "fashion_mnist_dir": Key("str", "folder with Fashion-MNIST IDX .gz files (None: Debian's, then TFDS)",
                             optional=True),
    "tinyshakespeare_path": Key("str", "Tiny Shakespeare input.txt (None: the copy shipped in src/mulo/data/assets)",
                                optional=True),
    "vocab_path": Key("str", "SentencePiece model for the 32k-vocabulary text tasks", optional=True),
    "local_batch_size": Key("int", "training batch size per task", min=1),
    "eval_batch_size": Key("int", "chunk size of jitted evaluation", min=1),
    "max_eval_examples": Key("int", "test examples per evaluation (None: whole test split)", optional=True, min=1),
    "prefetch_batches": Key("int", "batches kept ready on the device", min=1),
    "data_on_device": Key("str", "keep the training images on the accelerator and gather each batch there (only "
                          "indices cross to the device): on, off (gathered on the host, sent as uint8), auto (on for "
                          "GPU/TPU when they fit in a quarter of its memory; off on the CPU)",
                          choices=ON_DEVICE_MODES),
    # learned optimizers
    "hidden_size": Key("int", "hidden units of the learned optimizer's MLP", min=1),
    "adafac_step_mult": Key("float", "LO step multiplier (None: 0.01 for mup_small_fc_mlp, 0.001 for small_fc_mlp)",
                            optional=True, min=_POS),
    "adafac_exp_mult": Key("float", "LO magnitude exponent multiplier", min=0.0),
    "lo_clip_grad": Key("bool", "clip the optimizee gradient to global norm 1 inside the LO"),
    "lo_impl": Key("str", "how the LO computes its per-parameter MLP (the same function): reference (plain matmuls, the oracle), fused (one XLA elementwise loop), pallas (a Pallas kernel, hidden layer 2 on tensor cores; interpreted on CPU; not for VeLO)", choices=LO_IMPLS),
    "lo_eps_scaling": Key("str", "epsilon of the LO's per-tensor feature normaliser: none (1e-5 everywhere, the "
                          "reference) or fan_in (1e-5/fan_in for matrices, so it does not swamp the tiny gradients of "
                          "wide hidden layers); stored with theta", choices=EPS_SCALINGS),
    # hand-designed optimizers
    "learning_rate": Key("float", "learning rate of hand-designed optimizers", min=_POS),
    "beta1": Key("float", "Adam beta1", min=0.0, max=1.0, below_max=True),
    "beta2": Key("float", "Adam beta2", min=0.0, max=1.0, below_max=True),
    "weight_decay": Key("float", "AdamW weight decay", min=0.0),
    "sgd_momentum": Key("float", "SGD momentum (0: plain SGD)", min=0.0, max=1.0, below_max=True),
    "warmup_steps": Key("int", "linear warmup steps of hand-designed optimizers", min=0),
    "cosine_decay": Key("bool", "cosine-decay the learning rate to end_lr_ratio * lr over num_inner_steps"),
    "end_lr_ratio": Key("float", "final lr / peak lr of the cosine schedule", min=0.0),
    # VeLO (velo, mup_velo); its step_mult / exp_mult are adafac_step_mult (None: 0.001) / adafac_exp_mult
    "velo_lstm_hidden_size": Key("int", "VeLO: hidden units of the per-tensor LSTM (stored with theta)", min=1),
    "velo_param_inits": Key("int", "VeLO: per-parameter MLPs in the bank the LSTM mixes (stored with theta)", min=1),
    "velo_ff_hidden_size": Key("int", "VeLO: hidden units of each per-parameter MLP (stored with theta)", min=1),
    "velo_ff_hidden_layers": Key("int", "VeLO: hidden layers of each per-parameter MLP (stored with theta)", min=1),
    # meta-training
    "num_outer_steps": Key("int", "meta-training (outer) steps", min=1),
    "num_inner_steps": Key("int", "inner steps: max episode length (meta-train) or horizon (meta-test)", min=1),
    "num_tasks": Key("int", "antithetic perturbation pairs per task", min=1),
    "steps_per_jit": Key("int", "inner steps per jitted unroll call (must divide trunc_length)", min=1),
    "trunc_length": Key("int", "PES/ES truncation length K", min=1),
    "pes_std": Key("float", "std of the meta-parameter perturbations", min=_POS),
    "gradient_estimator": Key("str", "meta-gradient estimator", choices=ESTIMATOR_CHOICES),
    "truncation_schedule": Key("str", "episode lengths", choices=TRUNCATION_CHOICES),
    "truncation_schedule_min_length": Key("int", "shortest episode of the log-uniform schedule", min=1),
    "random_initial_iteration_offset": Key("int", "initial inner steps drawn in [0, this) to desynchronise tasks",
                                           min=0),
    "meta_loss_split": Key("str", "meta-loss: pre-update train loss, post-update loss on the same batch, or on a "
                                  "meta-valid batch", choices=META_LOSS_SPLITS),
    "meta_loss_norm": Key("str", "meta-training with several tasks: none (the meta-gradient is the mean of the tasks' "
                      "meta-gradients) or init_loss (each task's meta-loss divided by its meta-loss at "
                      "initialisation, so that no task family dominates by the units of its loss)",
                      choices=META_LOSS_NORMS),
    "task_batch_sizes": Key("list[int]", "meta-training: one batch size per task, in the order of `task` (None: "
                            "local_batch_size for every task)", optional=True, min=1),
    "meta_learning_rate": Key("float", "outer Adam lr when `schedule` is empty", min=_POS),
    "schedule": Key("dict", "outer AdamW schedule: init_value, peak_value, warmup_steps, decay_steps, end_value, "
                            "exponent (decay_steps includes warmup)", fields=SCHEDULE_FIELDS),
    "meta_weight_decay": Key("float", "outer AdamW weight decay", min=0.0),
    "meta_grad_clip": Key("float", "clip the meta-gradient to this global norm before Adam (None: off)",
                          optional=True, min=_POS),
    "save_iter": Key("int", "save a checkpoint every this many outer steps", min=1),
    "checkpoints_to_keep": Key("int", "checkpoints kept (oldest deleted)", min=1),
    "auto_resume": Key("bool", "continue the run's latest checkpoint if there is one"),
    # meta-testing
    "num_runs": Key("int", "seeds per task at meta-test", min=1),
    "test_interval": Key("int", "evaluate the test split every this many steps", min=1),
    "skip_test": Key("bool", "do not evaluate the test split"),
    "checkpoint": Key("str", "learned optimizer: run directory, its latest checkpoint, a theta file, hf:OWNER/NAME "
                      "(Hugging Face hub, e.g. hf:btherien/mulo), a folder with the hub's config.json and "
                      "model.safetensors, or " + pretrained.help_text(), optional=True),
    "wandb_checkpoint_id": Key("str", "learned optimizer from a wandb run: entity/project/run_id", optional=True),
    "use_bf16": Key("bool", "meta-train, meta-test, sweeps: the task's forward/backward in bf16; params, the LO's features and all optimizer state stay float32"),
    "test_steps_per_jit": Key("int", "meta-test/sweep: training steps per jitted lax.scan call", min=1),
    "gradient_accumulation_steps": Key("int", "meta-test/sweep: split each batch of local_batch_size into this many "
                                              "micro-batches and average their gradients (same result, less "
                                              "memory; must divide local_batch_size)", min=1),
    # sweeps
    "sweep_config": Key("dict", "sweep: method (grid, tpe, random), parameters, metric", fields=SWEEP_FIELDS),
    "storage": Key("str", "Optuna storage URL (None: SQLite in the run directory)", optional=True),
    "study_name": Key("str", "Optuna study name (None: the run name)", optional=True),
    "sweep_trials": Key("int", "trial budget for tpe/random sweeps (None: the whole grid)", optional=True, min=1),
    "sweep_objective_frac": Key("float", "objective = mean train loss over this last fraction of steps",
                                min=_POS, max=1.0),
    # coordinate check
    "widths": Key("list[int]", "widths of the coordinate check", min=1),
    "coord_steps": Key("int", "steps recorded by the coordinate check", min=1),
    # logging
    "wandb_mode": Key("str", "wandb logging (the WANDB_MODE environment variable wins)",
                      choices=WANDB_MODES),
    "wandb_project": Key("str", "wandb project"),
    "wandb_entity": Key("str", "wandb entity", optional=True),
    "log_every": Key("int", "log metrics every this many steps", min=1),
    "progress": Key("bool", "show progress bars"),
    # runtime
    "compilation_cache_dir": Key("str", "JAX's persistent compilation cache: a rerun, resume or sweep trial reuses "
                                        "compiled steps instead of compiling again (None: off; the "
                                        "MULO_COMPILATION_CACHE_DIR environment variable wins)", optional=True),
    "compilation_cache_max_gb": Key("float", "size of that cache, least recently used entries evicted", min=_POS),
    "jax_default_matmul_precision": Key("str", "precision of float32 matmuls (jax_default_matmul_precision): float32 (exact), tensorfloat32 (TF32 tensor cores on NVIDIA GPUs), bfloat16 (one bf16 pass); never left to the backend's default", choices=MATMUL_PRECISIONS),
    # devices and processes (mulo.parallel)
    "data_parallel": Key("int", "devices that split each batch (the mesh's batch axis); the other devices split the "
                                "perturbation pairs (num_tasks must be a multiple of their count)", min=1,
                         max=INT_MAX),
    "distributed": Key("str", "jax.distributed.initialize: auto (under mpirun/srun or with a coordinator_address), "
                              "on (always, JAX's cluster detection), off (one process)",
                       choices=DISTRIBUTED_MODES),
    "coordinator_address": Key("str", "host:port of process 0 for jax.distributed (else JAX_COORDINATOR_ADDRESS or "
                                      "the cluster's detection)", optional=True),
    "num_processes": Key("int", "number of processes of a multi-process run (else detected)", optional=True, min=1,
                         max=INT_MAX),
    "process_id": Key("int", "this process's index in a multi-process run (else detected)", optional=True, min=0,
                      max=INT_MAX),
    "cluster_detection_method": Key("str", "JAX's cluster detection to use (e.g. mpi4py, slurm); None: mpi4py under "
                                           "Open MPI, else JAX's automatic detection", optional=True),
}


class Config(Mapping):
    """A validated, read-only configuration: ``cfg.key`` or ``cfg["key"]``."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]):
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only; use cfg.replace(key=value)")

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        return f"Config({self._data!r})"

    def replace(self, **changes) -> "Config":
        """A validated copy with some keys changed."""
        return Config(validate({**self._data, **changes}))

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)


# ---------------------------------------------------------------------------------------------------------------------
# error messages


def _range_text(spec: Key) -> str:
    lo, hi = spec.min, spec.max
    if lo is not None and hi is not None:
        left = "(0" if lo == _POS else f"[{lo:g}"
        return f" in {left}, {hi:g}{')' if spec.below_max else ']'}"
    if lo is not None:
        return " > 0" if lo == _POS else f" >= {lo:g}"
    if hi is not None:
        return f" < {hi:g}" if spec.below_max else f" <= {hi:g}"
    return ""


def _accepted(spec: Key) -> str:
    if spec.choices:
        text = "one of " + ", ".join(map(str, spec.choices))
    else:
        text = {"list[str]": "a comma-separated list of strings", "list[int]": "a comma-separated list of integers",
                "list[float]": "a comma-separated list of numbers", "dict": "a dict (use --cfg-options key.sub=value)",
                "bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}[spec.type]
        text += _range_text(spec)
    if spec.optional:
        text += " (or None)"
    return text


def suggest(name: str, options: Iterable[str]) -> str:
    """' (did you mean X?)' for a near-miss, else ''."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key_error(key: str) -> ConfigError:
    return ConfigError(f"unknown config key '{_name(key)}'{suggest(key, SCHEMA)}; "
                       f"see --help for the accepted keys")


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _short(value: Any) -> str:
    """A value as one short line: its repr (quotes strings, escapes newlines, control characters and surrogates)."""
    return _clip(repr(value))


def _name(text: Any) -> str:
    """A key name as typed, on one line (escaped like a repr, without the quotes)."""
    return _clip(repr(str(text))[1:-1])


def _bad(name: str, spec: Key, value: Any, why: str = "") -> ConfigError:
    return ConfigError(f"bad value {_short(value)} for config key '{name}': expected {_accepted(spec)}{why}")


# ---------------------------------------------------------------------------------------------------------------------
# validation of Python values (from config files) and parsing of strings (from the CLI)


def _check_scalar(name: str, spec: Key, kind: str, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise _bad(name, spec, value)
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _bad(name, spec, value)
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond the float range
                raise _bad(name, spec, value) from None
        raise _bad(name, spec, value)
    if kind == "str":
        if isinstance(value, str):
            return value
        raise _bad(name, spec, value)
    raise AssertionError(f"unknown schema type {kind}")


def _to_plain(value: Any) -> Any:
    """MMEngine ConfigDict/list -> plain dict/list, recursively."""
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def validate_value(key: str, value: Any) -> Any:
    """Check a Python value against the schema; return it normalised (e.g. int -> float, "a,b" -> [a, b])."""
    if key not in SCHEMA:
        raise unknown_key_error(key)
    return _validate(key, SCHEMA[key], value)


def _validate(name: str, spec: Key, value: Any) -> Any:
    """``value`` checked against ``spec``; ``name`` is the (dotted) key shown in errors."""
    if value is None:
        if spec.optional:
            return None
        raise _bad(name, spec, value)
    if spec.type == "dict":
        if not isinstance(value, Mapping):
            raise _bad(name, spec, value)
        plain = _to_plain(value)
        if spec.fields is None:
            return plain
        out = {}
        for entry, v in plain.items():
            if entry not in spec.fields:
                raise ConfigError(f"unknown entry '{_name(entry)}' of config key '{name}'"
                                  f"{suggest(str(entry), spec.fields)}: expected {', '.join(spec.fields)}")
            out[entry] = _validate(f"{name}.{entry}", spec.fields[entry], v)
        return out
    if spec.type.startswith("list["):
        inner = spec.type[5:-1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
            if inner != "str":
                try:
                    value = [_parse_scalar(name, spec, inner, v) for v in value]
                except ConfigError:
                    raise _bad(name, spec, ",".join(value)) from None
        if not isinstance(value, (list, tuple)) or not value:
            raise _bad(name, spec, value)
        out = [_check_scalar(name, spec, inner, v) for v in value]
        for v in out:
            _check_range(name, spec, v, value)
        return out
    out = _check_scalar(name, spec, spec.type, value)
    _check_range(name, spec, out, value)
    return out


def _check_range(name: str, spec: Key, v: Any, shown: Any) -> None:
    if spec.choices is not None and v not in spec.choices:
        raise _bad(name, spec, shown, suggest(str(v), map(str, spec.choices)))
    if isinstance(v, float) and not math.isfinite(v):
        raise _bad(name, spec, shown, " (NaN and inf are not accepted)")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if spec.min is not None and v < spec.min:
            raise _bad(name, spec, shown)
        if spec.max is not None and (v >= spec.max if spec.below_max else v > spec.max):
            raise _bad(name, spec, shown)
        if isinstance(v, int) and abs(v) > INT_MAX:
            raise _bad(name, spec, shown, f" (at most {INT_MAX})")
    if isinstance(v, str):
        if name in NON_EMPTY and not v.strip():
            raise _bad(name, spec, shown, " (not empty" + ("; none for no value)" if spec.optional else ")"))
        if len(v) > MAX_STR:
            raise _bad(name, spec, shown, f" (at most {MAX_STR} characters)")
        if "\x00" in v:
            raise _bad(name, spec, shown, " (without NUL characters)")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad(name, spec, shown, " (valid UTF-8)") from None


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_scalar(name: str, spec: Key, kind: str, text: str) -> Any:
    try:
        if kind == "bool":
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if kind in ("int", "float") and not text.isascii():  # int() and float() read '١٢' and '１２' as 12
            raise ValueError
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        return text
    except ValueError:
        raise _bad(name, spec, text) from None


_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


def parse_cli_value(key: str, text: str) -> Any:
    """Turn the string given on the command line for ``key`` into a validated value."""
    if key not in SCHEMA:
        raise unknown_key_error(key)
    spec = SCHEMA[key]
    if spec.optional and text.strip().lower() in ("none", "null"):
        return None
    if spec.type == "dict":
        try:
            value = ast.literal_eval(text)
        except _LITERAL_ERRORS:
            raise _bad(key, spec, text) from None
        return validate_value(key, value)
    if spec.type.startswith("list["):
        return validate_value(key, text)
    return validate_value(key, _parse_scalar(key, spec, spec.type, text))


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except _LITERAL_ERRORS:
        return text


def apply_cfg_options(data: dict[str, Any], options: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (MMEngine's --cfg-options) to a plain dict, returning a new one."""
    data = _to_plain(data)
    for item in options:
        if "=" not in item:
            raise ConfigError(f"bad --cfg-options item {_short(item)}: expected key=value or key.sub=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        top = parts[0]
        if top not in SCHEMA:
            raise unknown_key_error(top)
        if len(parts) == 1:
            data[top] = parse_cli_value(top, text)
            continue
        if SCHEMA[top].type != "dict":
            raise ConfigError(f"bad --cfg-options item {_short(item)}: config key '{top}' is not a dict")
        node = data.setdefault(top, {})
        if node is None:
            node = data[top] = {}
        for p in parts[1:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = node[p] = {}
            node = child
        node[parts[-1]] = _literal(text)
    return data


def validate(data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a whole config dict: every key known, every value well-typed, cross-key rules."""
    out = {}
    for key, value in data.items():
        out[key] = validate_value(key, value)
    missing = [k for k in SCHEMA if k not in out]
    if missing:
        raise ConfigError(f"config is missing keys {', '.join(missing)}: inherit from config/base.py")
    if out["trunc_length"] % out["steps_per_jit"]:
        raise ConfigError(f"bad value {out['steps_per_jit']} for config key 'steps_per_jit': expected a divisor of "
                          f"trunc_length={out['trunc_length']}")
    if out["coordinator_address"] is not None:
        check_host_port("coordinator_address", out["coordinator_address"])
    if out["local_batch_size"] % out["gradient_accumulation_steps"]:
        raise ConfigError(f"bad value {out['gradient_accumulation_steps']} for config key "
                          f"'gradient_accumulation_steps': expected a divisor of "
                          f"local_batch_size={out['local_batch_size']}")
    return out


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$", re.ASCII)  # a host name or IPv4 address


def check_host_port(key: str, text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets, ``[::1]:1234``) with a port in 1..65535, else a one-line ConfigError."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"bad value {_short(text)} for config key '{key}': expected host:port (IPv6 as "
                           f"[addr]:port) with a port in 1..65535; {why}")

    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise bad("no ':port'" if not colon else "no host")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise bad(f"port {_clip(port)!r}")
    if host.startswith("[") or host.endswith("]"):
        import ipaddress

        try:
            ipaddress.IPv6Address(host[1:-1] if host.startswith("[") and host.endswith("]") else "?")
        except ValueError:
            raise bad(f"host {_clip(host)!r} is not a bracketed IPv6 address") from None
    elif not _HOST.match(host):
        raise bad(f"host {_clip(host)!r} is not a host name or address")
    return host, int(port)


# ---------------------------------------------------------------------------------------------------------------------
# files


def _read_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read an MMEngine Python config file (with `_base_` inheritance) into a plain dict."""
    from mmengine.config import Config as MMConfig

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = MMConfig.fromfile(str(path))
        _check_imports(path)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:  # mmengine raises many kinds (SyntaxError, FileNotFoundError, ...)
        msg = _clip(one_line(exc, None), 300)
        raise ConfigError(f"cannot read config file {path}: {type(exc).__name__}: {msg}") from None
    return _to_plain(cfg.to_dict())


def _check_imports(path: Path) -> None:
    """MMEngine reads a config without ``_base_`` with lazy imports, so ``import nonexistent`` passed silently: every
    top-level import of the file must name an importable module."""
    import importlib.util

    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise ConfigError(f"cannot read config file {path}: line {node.lineno}: no module named {name!r}")


def load_config(path: str | os.PathLike | None, cli: Mapping[str, Any] | None = None,
                cfg_options: Iterable[str] = ()) -> Config:
    """Build the run config: base defaults <- config file <- --cfg-options <- --key values (already parsed)."""
    data = _read_file(BASE_CONFIG)
    if path is not None:
        user = _read_file(path)
        for key in user:  # check names before merging so the error names the user's key
            if key not in SCHEMA:
                raise ConfigError(f"unknown config key '{key}' in {path}{suggest(key, SCHEMA)}")
        data.update(user)
    data = apply_cfg_options(data, cfg_options)
    data.update(cli or {})
    return Config(validate(data))


def dump_text(cfg: Config) -> str:
    """The resolved config as a Python config file that `--config` can load again."""
    lines = ["# Resolved mulo config: every key, as this run used it.", ""]
    for key in SCHEMA:
        lines.append(f"{key} = {cfg[key]!r}")
    return "\n".join(lines) + "\n"
