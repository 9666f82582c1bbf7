"""Load and validate run configurations.

A run's configuration is built in this order, each layer overriding the one before:

1. ``config/base.py`` (every run-level key with its default; the default component of each section),
2. the ``--config`` file (an MMEngine Python config; ``_base_`` inheritance merges dicts recursively),
3. ``--cfg-options a.b=1 ...`` (nested keys, ``lo.hidden_size=64``),
4. ``--key value`` and ``--section.key value`` options on the command line.

Only keys that the user actually wrote are merged, so a CLI default never overwrites a value from a config file (a
bug of the reference, whose ``store_true`` flags always clobbered config values).

A config has run-level keys (``SCHEMA``: what to run, data, loops, logging, devices) and component sections
(``mulo.app.sections``: ``optimizer``, ``lo``, ``estimator``, ``truncation``, ``task_options``), each a dict whose
keys its component declares. Today's flat keys (``hidden_size``, ``learning_rate``, ``num_tasks``, ...) are read
into their sections (``mulo.app.aliases.FLAT_KEYS``) with one notice each. Unknown keys, wrong types and bad values
raise ``ConfigError`` with one line naming the key, the bad value and what is accepted (``mulo.app.schema``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from mulo import pretrained
from mulo.app import sections
from mulo.app.config_file import RESOLVED_HEADER, is_run_config, read_config_file
from mulo.app.aliases import FLAT_KEYS, FLAT_OPTIMIZER, flat_notice, flat_optimizer, flat_targets
from mulo.app.schema import (INT_MAX, check, check_host_port, key_text, literal, parse_text, short, suggest,
                             to_plain)
from mulo.errors import ConfigError
from mulo.hparams import POSITIVE, Key
from mulo.registry import (DISTRIBUTED_MODES, MATMUL_PRECISIONS, META_LOSS_NORMS, META_LOSS_SPLITS,
                           ON_DEVICE_MODES, OPTIMIZER_CHOICES, SCHEDULE_KEYS, SWEEP_METHODS, WANDB_MODES)

REPO_ROOT = Path(__file__).resolve().parents[3]
BASE_CONFIG = REPO_ROOT / "config" / "base.py"

# the entries of `schedule`, in the order of SCHEDULE_KEYS (mulo.meta.outer reads them): init_value, peak_value,
# warmup_steps, decay_steps, end_value, exponent
SCHEDULE_FIELDS: dict[str, Key] = dict(zip(SCHEDULE_KEYS, (
    Key("float", "lr at step 0", min=0.0),
    Key("float", "lr at the end of the warmup", min=POSITIVE),
    Key("int", "linear warmup steps", min=0),
    Key("int", "total steps of warmup + cosine decay", min=1),
    Key("float", "lr at the end of the cosine", min=0.0),
    Key("float", "cosine exponent", min=POSITIVE),
), strict=True))
SWEEP_FIELDS: dict[str, Key] = {
    "method": Key("str", "search method", choices=SWEEP_METHODS),
    "parameters": Key("dict", "config key -> list of values (grid) or dict(low=, high=, log=)"),
    "metric": Key("str", "informational: the objective is always the tail-mean train loss"),
}

SCHEMA: dict[str, Key] = {
    # what to run
    "task": Key("list[str]", "task name(s), e.g. mumlp-w128-d3_fashionmnist-28x28x1; a comma list = multi-task"),
    "seed": Key("int", "random seed (init, data order, perturbations)", min=0),
    "name_suffix": Key("str", "appended to the run name"),
    "output_dir": Key("str", "where run directories are created"),
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
    # meta-training
    "num_outer_steps": Key("int", "meta-training (outer) steps", min=1),
    "num_inner_steps": Key("int", "inner steps: max episode length (meta-train) or horizon (meta-test)", min=1),
    "steps_per_jit": Key("int", "inner steps per jitted unroll call (must divide estimator.trunc_length)", min=1),
    "meta_loss_split": Key("str", "meta-loss: pre-update train loss, post-update loss on the same batch, or on a "
                                  "meta-valid batch", choices=META_LOSS_SPLITS),
    "meta_loss_norm": Key("str", "meta-training with several tasks: none (the meta-gradient is the mean of the tasks' "
                      "meta-gradients) or init_loss (each task's meta-loss divided by its meta-loss at "
                      "initialisation, so that no task family dominates by the units of its loss)",
                      choices=META_LOSS_NORMS),
    "task_batch_sizes": Key("list[int]", "meta-training: one batch size per task, in the order of `task` (None: "
                            "local_batch_size for every task)", optional=True, min=1),
    "meta_learning_rate": Key("float", "outer Adam lr when `schedule` is empty", min=POSITIVE),
    "schedule": Key("dict", "outer AdamW schedule: init_value, peak_value, warmup_steps, decay_steps, end_value, "
                            "exponent (decay_steps includes warmup)", fields=SCHEDULE_FIELDS),
    "meta_weight_decay": Key("float", "outer AdamW weight decay", min=0.0),
    "meta_grad_clip": Key("float", "clip the meta-gradient to this global norm before Adam (None: off)",
                          optional=True, min=POSITIVE),
    "init_theta": Key("str", "meta-train from this θ instead of a random one (warm start): a θ file, a meta-train run "
                      "directory, hf:OWNER/NAME or pretrained:NAME; its learned optimizer and hyper-parameters must be "
                      "the lo section's; the outer optimizer starts fresh; a resumed run continues its checkpoint",
                      optional=True),
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
                                min=POSITIVE, max=1.0),
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
    "compilation_cache_max_gb": Key("float", "size of that cache, least recently used entries evicted", min=POSITIVE),
    "jax_default_matmul_precision": Key("str", "precision of float32 matmuls (jax_default_matmul_precision): float32 (exact), tensorfloat32 (TF32 tensor cores on NVIDIA GPUs), bfloat16 (one bf16 pass); never left to the backend's default", choices=MATMUL_PRECISIONS),
    # devices and processes (mulo.parallel)
    "data_parallel": Key("int", "devices that split each batch (the mesh's batch axis); the other devices split the "
                                "perturbation pairs (estimator.num_pairs must be a multiple of their count)", min=1,
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
    """A validated, read-only configuration. ``cfg.key`` / ``cfg["key"]``: a run-level key, ``optimizer`` (the name
    of what runs: a hand-designed optimizer, or the ``lo`` section's learned one) and today's flat keys read from
    their sections (``hidden_size`` is ``cfg.section("lo")["hidden_size"]``); ``cfg.section(name)``: a section."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]):
        object.__setattr__(self, "_data", dict(data))

    def section(self, name: str) -> dict[str, Any]:
        """A copy of the section ``name`` (every key of its component)."""
        return dict(self._data[name])

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only; use cfg.replace(key=value)")

    def __getitem__(self, key):
        if key in SCHEMA:
            return self._data[key]
        return sections.flat_value(self._data, key)

    def __iter__(self):
        return iter([FLAT_OPTIMIZER] + [k for k in self._data if k in SCHEMA])

    def __len__(self):
        return 1 + sum(k in SCHEMA for k in self._data)

    def __repr__(self):
        return f"Config({self._data!r})"

    def __eq__(self, other):
        return self.to_dict() == other.to_dict() if isinstance(other, Config) else NotImplemented

    __hash__ = None

    def replace(self, **changes) -> "Config":
        """A validated copy with some keys changed: run-level keys, sections (dicts merged into them, ``lo=dict(
        hidden_size=8)``), ``section.key`` entries (as ``**{"lo.hidden_size": 8}``) or today's flat keys."""
        return Config(_build([(self.to_dict(), "", "", None), (changes, "", "", None)]))

    def to_dict(self) -> dict[str, Any]:
        """Run-level keys and sections (as dicts): what config.py of a run directory holds."""
        return {k: dict(v) if isinstance(v, Mapping) and k in sections.SECTION_NAMES else v
                for k, v in self._data.items()}


def unknown_key_error(key: str) -> ConfigError:
    return ConfigError(f"unknown config key '{key_text(key)}'{suggest(key, known_names())}; "
                       f"see --help for the accepted keys")


def known_names() -> list[str]:
    """Every top-level name a config may hold (suggestions include today's flat keys, which are read as aliases)."""
    from mulo.registry import learned_config_keys

    return [*SCHEMA, *sections.SECTION_NAMES, *FLAT_KEYS, *learned_config_keys()]


def validate_value(key: str, value: Any) -> Any:
    """Check a run-level key's Python value; return it normalised (e.g. int -> float, "a,b" -> [a, b])."""
    if key not in SCHEMA:
        raise unknown_key_error(key)
    return check(key, SCHEMA[key], value)


def option_key(key: str) -> Key:
    """The Key a command-line value for ``key`` is parsed with: a run-level key, ``section.key`` (the first
    component's that has it; checked again against the chosen one) or today's flat key."""
    if key in SCHEMA:
        return SCHEMA[key]
    if key == FLAT_OPTIMIZER:
        return Key("str", "optimizer", choices=OPTIMIZER_CHOICES)
    if key in sections.SECTION_NAMES:
        raise ConfigError(f"config section '{key}' is a dict: set its keys one by one ({key}.KEY=VALUE, "
                          f"--{key}.KEY VALUE)")
    section, _, entry = key.partition(".")
    if not entry:
        targets = flat_targets(key)
        if not targets:
            raise unknown_key_error(key)
        section, entry = targets[0]
    if section not in sections.SECTION_NAMES:
        raise unknown_key_error(key)
    found = sections.all_keys(section)
    if entry not in found:
        raise ConfigError(f"unknown key '{section}.{key_text(entry)}'{suggest(entry, found)}: {section} accepts "
                          f"{', '.join(found)}")
    return found[entry][0]


def parse_cli_value(key: str, text: str) -> Any:
    """Turn the string given on the command line for ``key`` into a checked value."""
    return parse_text(key, option_key(key), text)


def cfg_options_layer(options: Iterable[str]) -> dict[str, Any]:
    """``a.b.c=value`` overrides (MMEngine's --cfg-options) as one config layer of dotted keys: a section's key
    (``lo.hidden_size=64``), an entry of a dict key (``schedule.peak_value=3e-3``) or a plain key."""
    out: dict[str, Any] = {}
    for item in options:
        if "=" not in item:
            raise ConfigError(f"bad --cfg-options item {short(item)}: expected key=value or key.sub=value")
        dotted, text = item.split("=", 1)
        dotted = dotted.strip()
        parts = dotted.split(".")
        top = parts[0]
        if len(parts) == 1 or (top in sections.SECTION_NAMES and len(parts) == 2):
            out[dotted] = parse_cli_value(dotted, text)
        elif top not in SCHEMA:
            raise unknown_key_error(top)
        elif SCHEMA[top].type != "dict":
            raise ConfigError(f"bad --cfg-options item {short(item)}: config key '{top}' is not a dict")
        else:
            out[dotted] = literal(text)
    return out


def _merge(out: dict[str, Any], droppable: dict[str, set], layer: Mapping[str, Any], where: str, prefix: str,
           notices: list[str] | None) -> None:
    """Merge one layer (a file ``where``, --cfg-options, the command line) into ``out``: run-level keys replace,
    section entries merge; today's flat keys go to their sections (a notice each when ``notices`` is given, the key
    shown after ``prefix``)."""
    def put(section: str, entries: Mapping[str, Any], flat: bool) -> None:
        entries = dict(entries)
        old = out.setdefault(section, {})
        if "name" in entries and entries["name"] != old.get("name"):  # another component: the old keys were its
            droppable[section] |= set(old)
        for k, v in entries.items():
            old[k] = v
            (droppable[section].add if flat else droppable[section].discard)(k)

    for key, value in layer.items():
        section, dot, entry = str(key).partition(".")
        if key in sections.SECTION_NAMES:
            if not isinstance(value, Mapping):
                if key == FLAT_OPTIMIZER:  # today's optimizer = "<name>"
                    check(key, option_key(key), value)
                    _note(notices, flat_notice(key, value, prefix))
                    for s, entries in flat_optimizer(value).items():
                        put(s, entries, False)
                    continue
                sections.resolve(key, value)  # the one-line error of a section that is not a dict
            put(key, value, False)
        elif dot and section in sections.SECTION_NAMES:
            put(section, {entry: value}, False)
        elif dot and section in SCHEMA:  # --cfg-options schedule.peak_value=...: one entry of a dict key
            node = out[section] = to_plain(out.get(section) or {})
            *path, last = entry.split(".")
            for p in path:
                if not isinstance(node.get(p), dict):
                    node[p] = {}
                node = node[p]
            node[last] = value
        elif key in SCHEMA:
            out[key] = value
        elif flat_targets(key):
            _note(notices, flat_notice(key, value, prefix))
            for section, entry in flat_targets(key):
                put(section, {entry: value}, True)
        else:
            raise ConfigError(f"unknown config key '{key_text(key)}'{' in ' + where if where else ''}"
                              f"{suggest(str(key), known_names())}; see --help for the accepted keys")


def _note(notices: list[str] | None, line: str) -> None:
    if notices is not None and line not in notices:
        notices.append(line)


Layer = tuple  # (mapping, where it came from (a file or ""), how its keys are shown in notices, notices or None)


def _build(layers: Iterable[Layer]) -> dict[str, Any]:
    """The validated config dict from its layers, first to last."""
    out: dict[str, Any] = {}
    droppable: dict[str, set] = {s: set() for s in sections.SECTION_NAMES}
    for layer, where, prefix, notices in layers:
        _merge(out, droppable, layer, where, prefix, notices)
    for s in sections.SECTION_NAMES:
        out[s] = sections.resolve(s, out.get(s, {}), droppable[s])
    return validate(out)


def validate(data: Mapping[str, Any]) -> dict[str, Any]:
    """Check the run-level keys of a config dict whose sections are resolved: every key known, every value
    well-typed, cross-key rules."""
    out = {k: (v if k in sections.SECTION_NAMES else validate_value(k, v)) for k, v in data.items()}
    missing = [k for k in SCHEMA if k not in out]
    if missing:
        raise ConfigError(f"config is missing keys {', '.join(missing)}: inherit from config/base.py")
    trunc = out["estimator"]["trunc_length"]
    if trunc % out["steps_per_jit"]:
        raise ConfigError(f"bad value {out['steps_per_jit']} for config key 'steps_per_jit': expected a divisor of "
                          f"estimator.trunc_length={trunc}")
    if out["coordinator_address"] is not None:
        check_host_port("coordinator_address", out["coordinator_address"])
    if out["local_batch_size"] % out["gradient_accumulation_steps"]:
        raise ConfigError(f"bad value {out['gradient_accumulation_steps']} for config key "
                          f"'gradient_accumulation_steps': expected a divisor of "
                          f"local_batch_size={out['local_batch_size']}")
    return out


def load_config(path: str | os.PathLike | None, cli: Mapping[str, Any] | None = None,
                cfg_options: Iterable[str] = (), notices: list[str] | None = None) -> Config:
    """Build the run config: base defaults <- config file <- --cfg-options <- --key values (already parsed; a
    ``section.key`` entry sets one key of a section). Today's flat keys in the config file, --cfg-options or ``cli``
    add one notice each to ``notices`` (when given); a run directory's config.py (``RESOLVED_HEADER``: written by
    this or an older mulo) is read without notices."""
    layers = [(read_config_file(BASE_CONFIG), str(BASE_CONFIG), "", None)]
    if path is not None:
        layers.append((read_config_file(path), str(path), "", None if is_run_config(path) else notices))
    layers.append((cfg_options_layer(cfg_options), "", "--cfg-options ", notices))
    layers.append((dict(cli or {}), "", "--", notices))
    return Config(_build(layers))


def dump_text(cfg: Config) -> str:
    """The resolved config as a Python config file that `--config` can load again: run-level keys, then sections."""
    data = cfg.to_dict()
    lines = [RESOLVED_HEADER, ""]
    lines += [f"{key} = {data[key]!r}" for key in SCHEMA]
    lines += [f"{name} = {data[name]!r}" for name in sections.SECTION_NAMES]
    return "\n".join(lines) + "\n"
