"""Command-line interface: parse the subcommand and options, load the config, dispatch.

    python src/main.py SUBCOMMAND --config FILE [--key value ...] [--cfg-options a.b=1 ...]

Every config key is an option (``--task a,b`` for lists, ``--use_bf16 true|false`` for booleans, ``--key none`` for
optional keys). Only options the user gives are merged into the config. Errors the user caused print one line on
stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Callable, Sequence

from mulo.app import aliases, config, runtime, sections
from mulo.app.config import SCHEMA, Config, load_config, parse_cli_value, suggest
from mulo.errors import ConfigError, MuloError, NotImplementedYet
from mulo.hparams import Key
from mulo.registry import learned_config_keys

# subcommand -> (help, "module:function" or None while not implemented). Handlers take (cfg, args) and return an
# exit code.
COMMANDS: dict[str, tuple[str, str | None]] = {
    "meta-train": ("meta-train a learned optimizer with truncated PES/ES", "mulo.app.commands.meta_train:run"),
    "meta-test": ("train fresh tasks with a learned or hand-designed optimizer", "mulo.app.commands.meta_test:main"),
    "sweep": ("hyper-parameter sweep of a hand-designed optimizer (Optuna)", "mulo.app.commands.sweep:main"),
    "coord-check": ("muP coordinate check: activation size vs width", "mulo.app.commands.coord_check:run"),
    "report": ("figures and tables from meta-test run directories", "mulo.app.commands.report:main"),
}

# Subcommands that take run directories instead of requiring --config.
POSITIONAL_RUN_DIRS = {"report"}

# The run-level config keys each subcommand reads, in the order --help lists them (first); every other key follows
# under "other config keys" (accepted everywhere, used by other subcommands). Then the component sections it reads,
# each with every key its components declare (mulo.app.sections).
_WHAT = ("task", "seed", "name_suffix", "output_dir")
_DATA = ("local_batch_size", "data_dir", "tfds_download", "fashion_mnist_dir", "tinyshakespeare_path", "vocab_path",
         "prefetch_batches")
_EVAL = ("eval_batch_size", "max_eval_examples")
_LOOP = ("num_inner_steps", "test_interval", "skip_test", "use_bf16", "test_steps_per_jit", "gradient_accumulation_steps",
         "sweep_objective_frac")
_LOG = ("wandb_mode", "wandb_project", "wandb_entity", "log_every", "progress")
_RUNTIME = ("compilation_cache_dir", "compilation_cache_max_gb")
COMMAND_KEYS: dict[str, tuple[str, ...]] = {
    "meta-train": _WHAT + ("num_outer_steps", "num_inner_steps", "steps_per_jit", "meta_loss_split", "meta_loss_norm",
                           "task_batch_sizes", "meta_learning_rate", "schedule", "meta_weight_decay", "meta_grad_clip",
                           "init_theta", "save_iter", "checkpoints_to_keep", "auto_resume")
                  + _DATA + ("use_bf16",) + _LOG + _RUNTIME,
    "meta-test": _WHAT + ("num_runs", "checkpoint", "wandb_checkpoint_id") + _LOOP + _DATA + _EVAL + _LOG + _RUNTIME,
    "sweep": _WHAT + ("sweep_config", "sweep_trials", "storage", "study_name") + _LOOP + _DATA + _EVAL + _LOG
             + _RUNTIME,
    "coord-check": _WHAT + ("widths", "coord_steps") + _DATA + _RUNTIME,
    "report": ("output_dir", "sweep_objective_frac"),
}
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "meta-train": ("lo", "estimator", "truncation", "task_options"),
    "meta-test": ("optimizer", "lo", "task_options"),
    "sweep": ("optimizer", "task_options"),
    "coord-check": ("optimizer", "lo", "task_options"),
    "report": (),
}


def command_keys(command: str) -> tuple[str, ...]:
    """The run-level config keys ``command`` reads, in --help order, each once."""
    return tuple(k for k in dict.fromkeys(COMMAND_KEYS.get(command, ())) if k in SCHEMA)


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message):  # noqa: D401 - argparse API
        raise ConfigError(message)


def _metavar(spec: Key) -> str:
    if spec.choices:
        return "{" + ",".join(map(str, spec.choices)) + "}"
    return {"list[str]": "A,B,...", "list[int]": "N,N,...", "list[float]": "X,X,...", "dict": "DICT",
            "bool": "true|false", "int": "INT", "float": "FLOAT", "str": "STR"}[spec.type]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python src/main.py", description="mulo: learned optimizers under muP (JAX).",
                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    for name, (help_text, _) in COMMANDS.items():
        usage = (f"%(prog)s RUN_DIR [RUN_DIR ...] [--config FILE] [--key value ...]" if name in POSITIONAL_RUN_DIRS
                 else "%(prog)s --config FILE [--key value ...] [--section.key value ...] [--cfg-options KEY=VALUE ...]")
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False, usage=usage,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="Every config key is an option, a section's as --section.key (--lo.hidden_size 64); lists "
                                  "are comma-separated, booleans true/false, optional values accept none. Today's flat "
                                  "keys (--hidden_size, --learning_rate, --num_tasks, ...) are read into their sections "
                                  "with a notice (README 'Configs'). The reference implementation's flags are accepted "
                                  "too (" + ", ".join(f"--{f}" for f in aliases.FLAGS) + "; see README "
                                  "'Coming from the reference code').")
        if name in POSITIONAL_RUN_DIRS:
            p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="meta-test run directories")
            p.add_argument("--config", help="MMEngine config file (optional here)")
        else:
            p.add_argument("--config", required=True, help="MMEngine config file (e.g. config/meta_train/...py)")
        p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                       help="nested overrides, e.g. schedule.peak_value=3e-3 lo.hidden_size=64")
        first = list(command_keys(name))
        groups = [(p.add_argument_group(f"config keys {name} reads (defaults in config/base.py)"), first),
                  (p.add_argument_group("other config keys (accepted; read by other subcommands)"),
                   [k for k in SCHEMA if k not in first])]
        for keys, names in groups:
            for key in names:
                _add(keys, key, SCHEMA[key], SCHEMA[key].help)
        shown = COMMAND_SECTIONS[name]
        for section in shown + tuple(s for s in sections.SECTION_NAMES if s not in shown):
            group = p.add_argument_group(
                f"section {section} (--{section}.KEY; {_SECTION_HELP[section]})" if section in shown
                else f"section {section} (accepted; read by other subcommands)")
            for entry, (spec, owners) in sections.all_keys(section).items():
                text = spec.help + (f" [{', '.join(owners)}]" if owners and section in sections.NAMED else "")
                _add(group, f"{section}.{entry}", spec, text if section in shown else argparse.SUPPRESS)
        for flat in (aliases.FLAT_OPTIMIZER, *aliases.FLAT_KEYS, *learned_config_keys()):  # today's keys: aliases
            if f"--{flat}" not in p._option_string_actions:
                p.add_argument(f"--{flat}", dest=f"key__{flat}", default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                               **({"nargs": "?", "const": "true"} if config.option_key(flat).type == "bool" else {}))
    return parser


_SECTION_HELP = {"optimizer": "what runs: name=lo (the lo section's learned optimizer) or a hand-designed one",
                 "lo": "the learned optimizer", "estimator": "the meta-gradient estimator",
                 "truncation": "the episode lengths", "task_options": "options of every task"}


def _add(group: Any, key: str, spec: Key, help_text: str) -> None:
    kwargs = dict(dest=f"key__{key}", default=argparse.SUPPRESS, metavar=_metavar(spec), help=help_text)
    if spec.type == "bool":
        kwargs.update(nargs="?", const="true")
    group.add_argument(f"--{key}", **kwargs)


def _check_unknown(unknown: list[str]) -> None:
    for token in unknown:
        if token.startswith("--"):
            key = token[2:].split("=", 1)[0]
            raise ConfigError(f"unknown option '--{key}'{suggest(key, _options())}; see --help for the accepted keys")
    raise ConfigError(f"unexpected argument {unknown[0]!r}")


def _options() -> list[str]:
    return [*config.known_names(), *(f"{s}.{k}" for s in sections.SECTION_NAMES for k in sections.all_keys(s))]


def parse(argv: Sequence[str], notices: list[str] | None = None) -> tuple[argparse.Namespace, Config]:
    """Parse argv into (args, validated config). The reference's flags, config names and run_type are accepted
    (``mulo.app.aliases``), each with a notice line: printed on stderr once the command line is valid, or, given a
    ``notices`` list, appended to it for the caller to print after the command succeeded. When the command line
    is not valid, the error is the only line and names the reference's flags it read (``with_notices``)."""
    argv, said = aliases.translate(argv, list(COMMANDS))
    try:
        args, cfg = _parse(argv, said)
    except MuloError as exc:
        raise with_notices(exc, said) from None
    if notices is None:
        for line in said:
            print(line, file=sys.stderr)
    else:
        notices += said
    return args, cfg


def with_notices(exc: MuloError, notices: Sequence[str]) -> MuloError:
    """The error with the alias notices folded into its one line (short: each up to its reason)."""
    if not notices:
        return exc
    short = [n.removeprefix("note: ").split(" (")[0].split(": ")[0] if " ignored: " in n
             else n.removeprefix("note: ").split(" (")[0] for n in notices]
    folded = type(exc)(f"{exc} (the reference's spelling was read: {'; '.join(short)})")
    folded.exit_code = exc.exit_code
    return folded


def _parse(argv: Sequence[str], notices: list[str]) -> tuple[argparse.Namespace, Config]:
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(argv))
    if unknown:
        _check_unknown(unknown)
    if args.command is None:
        raise ConfigError("missing subcommand: one of " + ", ".join(COMMANDS) + " (see --help)")
    cli = {name[5:]: parse_cli_value(name[5:], value) for name, value in vars(args).items()
           if name.startswith("key__")}
    cfg = load_config(args.config, cli=cli, cfg_options=args.cfg_options, notices=notices)
    return args, cfg


def _handler(command: str) -> Callable[[Config, argparse.Namespace], int]:
    target = COMMANDS[command][1]
    if target is None:
        raise NotImplementedYet(f"'{command}' is not implemented yet")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    notices: list[str] = []
    try:
        runtime.library_dirs()  # before mmengine/yapf, matplotlib, keras or wandb are imported
        args, cfg = parse(argv, notices)
        runtime.apply(cfg)
        code = int(_handler(args.command)(cfg, args) or 0)
        for line in notices:  # how the reference's spelling was read: after success only (an error says it)
            print(line, file=sys.stderr)
        return code
    except MuloError as exc:
        print(f"error: {with_notices(exc, notices)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # an output that became unwritable mid-run (disk full, removed, read-only)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - XLA's out-of-memory error is the user's size, not a bug
        from mulo.app.memory import is_out_of_memory, out_of_memory_line

        if not is_out_of_memory(exc):
            raise
        print(f"error: {out_of_memory_line(exc)}", file=sys.stderr)
        return 2
