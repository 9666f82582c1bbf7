"""The reference implementation's command lines, accepted as they are: flag aliases, its config file names, and its
way of choosing what to run (the config's ``run_type``; no subcommand).

``translate(argv)`` rewrites the reference's spelling into mulo's and returns one notice per alias used (each said
once), e.g. the reference README's

    python src/main.py --config config/meta_test/image-mlp-fmst_fedlagg-adafac.py --test_project P --needs_state ...

becomes ``meta-test --config config/meta_test/meta_test_base.py --wandb_project P ...``. The table below is the one
place these names live; README "Coming from the reference code" lists the same mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mulo.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Alias:
    """A reference flag: the mulo key it sets (None: ignored), the value it sets when it is a bare store_true flag
    (None: it takes the value that follows it), and why."""

    key: str | None
    value: str | None
    note: str


FLAGS: dict[str, Alias] = {
    "train_project": Alias("wandb_project", None, "the reference's meta-train wandb project; mulo has one project key"),
    "test_project": Alias("wandb_project", None, "the reference's meta-test wandb project; mulo has one project key"),
    "needs_state": Alias(None, "true", "ignored: muP scales are static metadata of each task here, there is no model "
                                       "state to thread through"),
    "from_checkpoint": Alias("auto_resume", "true", "continues the run's latest checkpoint, as the reference's flag "
                                                    "did"),
    "test_checkpoint": Alias("checkpoint", None, "a learned optimizer's theta file or meta-train run directory"),
    "tfds_data_dir": Alias("data_dir", None, "TFDS data directory"),
    "sweep_id": Alias("study_name", None, "the reference joined a wandb sweep by id; mulo joins the Optuna study of "
                                          "that name (give --storage too for a study shared between machines)"),
}

# The reference's config files named in its README that mulo has under another name (same folder kind).
CONFIGS: dict[str, str] = {
    "config/meta_test/image-mlp-fmst_fedlagg-adafac.py": "config/meta_test/meta_test_base.py",
}

# The reference chose what to run with the config's (or the command line's) run_type; mulo with a subcommand.
RUN_TYPES: dict[str, str] = {"meta-train": "meta-train", "benchmark": "meta-test", "sweep": "sweep"}
CONFIG_FOLDERS: dict[str, str] = {"meta_train": "meta-train", "meta_test": "meta-test", "sweeps": "sweep",
                                  "coord_check": "coord-check"}

_BOOL_WORDS = {"true", "false", "1", "0", "yes", "no", "on", "off"}


def _split(token: str) -> tuple[str, str | None]:
    name, eq, value = token[2:].partition("=")
    return name, (value if eq else None)


def _config_alias(path: str) -> str | None:
    """mulo's config for a reference config path that does not exist here (matched on its last two path parts)."""
    if Path(path).exists():
        return None
    tail = "/".join(Path(path).parts[-2:])
    for ref, ours in CONFIGS.items():
        if "/".join(Path(ref).parts[-2:]) == tail:
            return ours
    return None


def translate(argv: Sequence[str], commands: Sequence[str]) -> tuple[list[str], list[str]]:
    """(mulo argv, notices) for a command line that may use the reference's flags, config names and run_type."""
    out: list[str] = []
    notes: list[str] = []

    def note(text: str) -> None:
        if text not in notes:
            notes.append(text)

    run_type = None
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or token == "--":
            out.append(token)
            continue
        name, inline = _split(token)
        if name == "run_type":
            value = inline if inline is not None else (tokens[i] if i < len(tokens) else "")
            i += inline is None
            if value not in RUN_TYPES:
                raise ConfigError(f"bad value {value!r} for the reference's --run_type: expected one of "
                                  f"{', '.join(RUN_TYPES)}")
            run_type = RUN_TYPES[value]
            continue
        if name == "config":
            value = inline if inline is not None else (tokens[i] if i < len(tokens) else None)
            i += inline is None and value is not None
            ours = _config_alias(value) if value is not None else None
            if ours is not None:
                note(f"note: config {value} is the reference's; using mulo's {ours}")
                value = str(REPO_ROOT / ours) if not Path(ours).exists() else ours
            out += ["--config"] + ([value] if value is not None else [])
            continue
        alias = FLAGS.get(name)
        if alias is None:
            out.append(token)
            continue
        if alias.value is not None:  # a bare store_true flag; an explicit true/false after it is accepted too
            value = alias.value
            if inline is not None:
                value = inline
            elif i < len(tokens) and tokens[i].lower() in _BOOL_WORDS:
                value = tokens[i]
                i += 1
            if value.strip().lower() not in _BOOL_WORDS:
                raise ConfigError(f"bad value {value[:80]!r} for the reference's --{name}: expected true or false "
                                  f"(or the bare flag)")
        else:
            value = inline if inline is not None else (tokens[i] if i < len(tokens) else None)
            i += inline is None and value is not None
            if value is None or not value.strip() or value.startswith("--"):
                raise ConfigError(f"the reference's --{name} needs a value: --{name} VALUE (it sets --{alias.key})")
        if alias.key is None:
            note(f"note: --{name} {alias.note}")
            continue
        shown = f"--{alias.key} {value}" if alias.value is not None else f"--{alias.key}"
        note(f"note: --{name} is read as {shown} ({alias.note})")
        out += [f"--{alias.key}"] + ([value] if value is not None else [])

    if not out or out[0] not in commands:
        if out and not out[0].startswith("-"):
            return out, notes  # an unknown subcommand: argparse says so
        if any(t in ("-h", "--help", "--help-all") for t in out) and run_type is None:
            return out, notes
        chosen, why = run_type, "--run_type"
        if chosen is None:
            config = next((out[k + 1] for k, t in enumerate(out[:-1]) if t == "--config"), None)
            folders = [p for p in Path(config).parts if p in CONFIG_FOLDERS] if config else []
            chosen = CONFIG_FOLDERS[folders[-1]] if folders else None
            why = f"the config's folder {folders[-1]}/" if folders else ""
        if chosen is not None:
            note(f"note: no subcommand given: running {chosen} (from {why})")
            out = [chosen] + out
    elif run_type is not None and run_type != out[0]:
        raise ConfigError(f"--run_type says {run_type} but the subcommand is {out[0]}: give one of them")
    return out, notes


# ---------------------------------------------------------------------------------------------------------------------
# today's flat config keys -> the component sections that own them (config files, --cfg-options, --key on the command
# line: one notice each; silent for a run directory's config.py written by an older mulo). The learned optimizers'
# flat keys are each LO's own map (``LearnedSpec.config_keys``: hidden_size -> lo.hidden_size, adafac_step_mult ->
# lo.step_mult, velo_lstm_hidden_size -> lo.lstm_hidden_size, ...); ``optimizer`` is read by ``flat_optimizer``.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "learning_rate": ("optimizer", "learning_rate"), "beta1": ("optimizer", "b1"), "beta2": ("optimizer", "b2"),
    "weight_decay": ("optimizer", "weight_decay"), "sgd_momentum": ("optimizer", "momentum"),
    "warmup_steps": ("optimizer", "warmup_steps"), "cosine_decay": ("optimizer", "cosine_decay"),
    "end_lr_ratio": ("optimizer", "end_lr_ratio"),
    "lo_impl": ("lo", "impl"),
    "gradient_estimator": ("estimator", "name"), "pes_std": ("estimator", "std"),
    "trunc_length": ("estimator", "trunc_length"), "num_tasks": ("estimator", "num_pairs"),
    "truncation_schedule": ("truncation", "name"), "truncation_schedule_min_length": ("truncation", "min_length"),
    "random_initial_iteration_offset": ("truncation", "random_offset"),
    "mup_input_mult": ("task_options", "mup_input_mult"), "mup_output_mult": ("task_options", "mup_output_mult"),
    "mup_hidden_lr_mult": ("task_options", "mup_hidden_lr_mult"), "d_head": ("task_options", "d_head"),
}
FLAT_OPTIMIZER = "optimizer"  # a hand-designed name -> optimizer.name; a learned one -> optimizer.name=lo + lo.name


def flat_targets(key: str) -> list[tuple[str, str]]:
    """The (section, key)s that today's flat config key ``key`` now is (several when components share a flat key, e.g.
    a learned optimizer whose ``config_keys`` read ``learning_rate``); [] for a run-level key or no flat key."""
    from mulo.registry import LEARNED_OPTIMIZERS

    out = [FLAT_KEYS[key]] if key in FLAT_KEYS else []
    for _, spec in LEARNED_OPTIMIZERS.items():
        if key in spec.config_keys and ("lo", spec.config_keys[key]) not in out:
            out.append(("lo", spec.config_keys[key]))
    return out


def flat_optimizer(value: Any) -> dict[str, dict[str, Any]]:
    """The sections that today's ``optimizer = <name>`` sets."""
    from mulo.registry import LO_CHOICE, is_learned

    if isinstance(value, str) and is_learned(value):
        return {"optimizer": {"name": LO_CHOICE}, "lo": {"name": value}}
    return {"optimizer": {"name": value}}


def flat_notice(key: str, value: Any, where: str) -> str:
    """The one notice line for a flat key read as its section's key(s)."""
    if key == FLAT_OPTIMIZER:
        shown = ", ".join(f"{s}.{k}={v!r}" for s, entries in flat_optimizer(value).items() for k, v in entries.items())
    else:
        shown = " / ".join(f"{section}.{entry}" for section, entry in flat_targets(key)) or key
    return f"note: {where}{key} is read as {shown} (today's flat key; see README 'Configs')"
