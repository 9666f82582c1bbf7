"""`--help` of each subcommand lists the run-level keys that subcommand reads first, every other key after, then the
component sections it reads with every key their registered components declare."""

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
    return re.findall(r"^  --([a-z_0-9.]+)", text, flags=re.M)


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
    assert "optimizer.learning_rate" in order and "estimator.trunc_length" not in order  # meta-test runs no estimator
    order = _options(_help("meta-train", capsys))
    assert order.index("num_outer_steps") < order.index("num_runs")
    assert {"estimator.num_pairs", "truncation.min_length", "task_options.d_head"} <= set(order)
    assert "optimizer.learning_rate" not in order  # meta-train trains the lo section's LO, runs no hand optimizer
    assert set(cli.COMMAND_KEYS["report"]) == {"output_dir", "sweep_objective_frac"}
    listed = {k for keys in cli.COMMAND_KEYS.values() for k in keys}
    assert listed <= set(SCHEMA)  # every listed key is a real key
    assert "--needs_state" in _help("meta-train", capsys)  # the epilog names the reference's flags


@pytest.mark.parametrize("command", ["meta-train", "meta-test"])
def test_the_learned_optimizers_keys_are_read_not_other_keys(command, capsys):
    """Every key of every registered LO (VeLO's among them) is listed under the lo section of the commands that read
    it, with the LOs that have it; sweep (hand-designed only) does not list them; the section's choices are the
    registry's names."""
    from mulo.registry import component, learned_names, names

    text = _help(command, capsys)
    lo_keys = {f"lo.{k}" for name in learned_names() for k in component("lo", name).schema()}
    assert {"lo.lstm_hidden_size", "lo.param_inits", "lo.ff_hidden_size", "lo.ff_hidden_layers",
            "lo.eps_scaling", "lo.hidden_size"} <= lo_keys
    assert lo_keys | {"lo.name", "lo.impl"} <= set(_options(text))
    assert re.search(r"--lo\.lstm_hidden_size INT\s+.*\[velo, mup_velo\]", text, flags=re.S)
    assert "--lo.name {" + ",".join(learned_names()) + "}" in text
    sweep = _help("sweep", capsys)
    assert not lo_keys & set(_options(sweep))
    assert "--optimizer.name {" + ",".join(names("optimizer") + ("lo",)) + "}" in sweep
