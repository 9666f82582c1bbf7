"""README's `python src/main.py ...` commands use the config's section keys (issue #24): none of them names one of
today's flat keys (``--optimizer muadam``, ``--learning_rate``, ``--num_tasks``, ...), which still run but print a
``note:`` line each, and every command without placeholders parses with no notice at all. Cheap: nothing is trained."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mulo.app import cli
from mulo.app.aliases import FLAT_OPTIMIZER, flat_targets
from mulo.app.config import load_config
from mulo.app.sections import SECTION_NAMES

REPO = next(p for p in Path(__file__).resolve().parents if (p / "README.md").is_file() and (p / "src").is_dir())
SUBCOMMANDS = tuple(cli.COMMANDS)
PLACEHOLDER = re.compile(r"\.\.\.|<|>|\[|\]|^[A-Z_]+$|/[A-Z_]+$")


def _argv(text: str) -> list[str] | None:
    """The arguments after `src/main.py` of one shell command line (comments dropped), or of a code span that starts
    with the subcommand; None when it is not a mulo command."""
    try:
        tokens = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError:
        return None
    for i, token in enumerate(tokens):
        if token.endswith("src/main.py"):
            return tokens[i + 1:]
    return tokens if tokens and tokens[0] in SUBCOMMANDS and len(tokens) > 1 and tokens[1].startswith("--") else None


def readme_commands(text: str) -> list[list[str]]:
    """Every mulo command of a README: the lines of its ```bash blocks (continuations joined) and its inline code
    spans (which may wrap over lines)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = _argv(line)
            if argv is not None:
                out.append(argv)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        argv = _argv(span.replace("\n", " "))
        if argv is not None:
            out.append(argv)
    return out


def flat_keys(argv: list[str]) -> list[str]:
    """The flat keys a command line names, as `--key` or as a --cfg-options `key=value` item."""
    keys, cfg_options = [], False
    for token in argv:
        if token.startswith("--"):
            cfg_options = token == "--cfg-options"
            keys.append(token[2:].split("=", 1)[0])
        elif cfg_options and "=" in token:
            keys.append(token.split("=", 1)[0])
    return [k for k in keys if k == FLAT_OPTIMIZER or flat_targets(k)]


COMMANDS = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))


def test_the_extraction_finds_readme_commands_and_flat_keys():
    assert len(COMMANDS) >= 20, COMMANDS  # the README's blocks and inline commands, not an empty scan
    assert {argv[0] for argv in COMMANDS} >= {"meta-train", "meta-test", "sweep", "coord-check", "report"}
    sample = ("```bash\npython src/main.py meta-test --config c.py --optimizer muadam \\\n    --learning_rate 0.1\n```\n"
              "and `python src/main.py meta-train --num_tasks 8\n--cfg-options hidden_size=64 lo.step_mult=0.1`")
    found = [flat_keys(argv) for argv in readme_commands(sample)]
    assert found == [["optimizer", "learning_rate"], ["num_tasks", "hidden_size"]]
    assert flat_keys(["meta-test", "--optimizer.name", "muadam", "--optimizer.learning_rate", "0.1"]) == []


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv)[:90])
def test_readme_command_names_no_flat_key(argv):
    assert flat_keys(argv) == [], f"README command uses today's flat keys (a note each): {' '.join(argv)}"


RUNNABLE = [argv for argv in COMMANDS if argv[0] != "report" and "--help" not in argv
            and not any(PLACEHOLDER.search(t) for t in argv)]


@pytest.mark.parametrize("argv", RUNNABLE, ids=lambda argv: " ".join(argv)[:90])
def test_readme_command_parses_without_notice(argv, monkeypatch):
    monkeypatch.chdir(REPO)
    notices: list[str] = []
    cli.parse(argv, notices)
    assert notices == [], notices


def test_readme_config_snippet_loads_without_notice(tmp_path):
    """The README's config example (the python block setting the sections) is a config file in the section form."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    snippets = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
                if re.search(rf"^({'|'.join(SECTION_NAMES)}) = dict\(", b, flags=re.M)]
    assert snippets, "README's Configs example is gone"
    for i, snippet in enumerate(snippets):
        path = tmp_path / f"snippet{i}.py"
        path.write_text(snippet)
        notices: list[str] = []
        load_config(path, notices=notices)
        assert notices == [], notices
