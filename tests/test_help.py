"""`--help` of each subcommand lists the keys that subcommand reads first, every other key after."""

from __future__ import annotations

import re

import pytest

from mulo.app import cli
from mulo.app.config import SCHEMA


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
    assert [k for k in _options(head) if k in SCHEMA] == list(cli.command_keys(command))
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
    listed = {k for keys in cli.COMMAND_KEYS.values() for k in keys} - {cli.LEARNED_KEYS}
    assert listed <= set(SCHEMA)  # every listed key is a real key
    assert "--needs_state" in _help("meta-train", capsys)  # the epilog names the reference's flags


@pytest.mark.parametrize("command", ["meta-train", "meta-test"])
def test_the_learned_optimizers_keys_are_read_not_other_keys(command, capsys):
    """The keys of every registered LO (VeLO's velo_* among them, and lo_eps_scaling) are listed among the keys
    meta-train and meta-test read, not under "other config keys"; sweep (hand-designed only) does not list them."""
    from mulo.registry import learned_spec

    head, _, tail = _help(command, capsys).partition("other config keys")
    velo = set(learned_spec("mup_velo").config_keys)
    lo_keys = velo | set(learned_spec("mup_small_fc_mlp").config_keys) | {"lo_impl"}
    assert {"velo_lstm_hidden_size", "velo_param_inits", "velo_ff_hidden_size", "velo_ff_hidden_layers",
            "lo_eps_scaling"} <= lo_keys
    assert lo_keys <= set(_options(head)) and not lo_keys & set(_options(tail))
    head, _, tail = _help("sweep", capsys).partition("other config keys")
    assert {k for k in velo if k.startswith("velo_")} <= set(_options(tail))
