"""`--help` of each subcommand lists the keys that subcommand reads first, every other key after."""

from __future__ import annotations

import re

import pytest

from mulo import cli
from mulo.config import SCHEMA


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    return capsys.readouterr().out


def _options(text: str) -> list[str]:
    return re.findall(r"^  --([a-z_0-9]+)", text, flags=re.M)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_lists_the_keys_it_reads_first(command, capsys):
    text = _help(command, capsys)
    head, sep, tail = text.partition("other config keys (accepted; read by other subcommands):")
    assert sep, text[:500]
    reads = [k for k in cli.COMMAND_KEYS[command] if k in SCHEMA]
    assert [k for k in _options(head) if k in SCHEMA] == list(dict.fromkeys(reads))
    assert sorted(_options(head) + _options(tail)) == sorted(set(_options(head) + _options(tail)))  # each once
    assert set(SCHEMA) <= set(_options(head)) | set(_options(tail))  # nothing hidden
    assert f"config keys {command} reads" in head


def test_each_command_reads_the_keys_one_expects(capsys):
    order = _options(_help("meta-test", capsys))
    assert order.index("num_runs") < order.index("num_outer_steps")
    assert order.index("gradient_accumulation_steps") < order.index("trunc_length")
    order = _options(_help("meta-train", capsys))
    assert order.index("num_outer_steps") < order.index("num_runs")
    assert set(cli.COMMAND_KEYS["report"]) == {"output_dir", "sweep_objective_frac"}
    listed = {k for keys in cli.COMMAND_KEYS.values() for k in keys}
    assert listed <= set(SCHEMA) | {"lo_impl"}  # every listed key is a real key (lo_impl lands with its own issue)
    assert "--needs_state" in _help("meta-train", capsys)  # the epilog names the reference's flags
