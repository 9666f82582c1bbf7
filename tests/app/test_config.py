"""Config loading: _base_ inheritance, CLI overrides in both directions, and one-line errors for bad input."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mulo.app.cli import parse
from mulo.app.config import BASE_CONFIG, SCHEMA, Config, dump_text, load_config
from mulo.app.sections import SECTION_NAMES
from mulo.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def cfg_dir(tmp_path):
    """parent.py inherits config/base.py; child.py inherits parent.py."""
    write(tmp_path / "parent.py", f"""
        _base_ = [{str(BASE_CONFIG)!r}]
        num_tasks = 4
        use_bf16 = True
        schedule = dict(peak_value=3e-3, warmup_steps=100, decay_steps=4900)
        task = "mumlp-w128-d3_fashionmnist-28x28x1"
    """)
    write(tmp_path / "child.py", """
        _base_ = ["./parent.py"]
        num_tasks = 2
        schedule = dict(end_value=1e-3)
    """)
    return tmp_path


def test_base_file_and_schema_list_the_same_keys():
    from mmengine.config import Config as MMConfig

    keys = set(MMConfig.fromfile(str(BASE_CONFIG)).to_dict())
    assert keys == set(SCHEMA) | set(SECTION_NAMES)


def test_base_inheritance_overrides_scalars_and_merges_dicts(cfg_dir):
    cfg = load_config(cfg_dir / "child.py")
    assert cfg.num_tasks == 2  # child wins
    assert cfg.use_bf16 is True  # from parent
    assert cfg.schedule == {"peak_value": 3e-3, "warmup_steps": 100, "decay_steps": 4900, "end_value": 1e-3}
    assert cfg.task == ["mumlp-w128-d3_fashionmnist-28x28x1"]  # a string becomes a one-element list
    assert cfg.seed == 0  # from config/base.py


def test_cli_overrides_scalars_lists_and_booleans_both_ways(cfg_dir):
    child = str(cfg_dir / "child.py")
    _, cfg = parse(["meta-train", "--config", child, "--num_tasks", "16", "--task", "a-w1-d1_x,b-w2-d1_x",
                    "--use_bf16", "false", "--widths", "64,128", "--pes_std=0.05"])
    assert cfg.num_tasks == 16
    assert cfg.task == ["a-w1-d1_x", "b-w2-d1_x"]
    assert cfg.use_bf16 is False  # the file said True
    assert cfg.widths == [64, 128]
    assert cfg.pes_std == 0.05

    _, cfg = parse(["meta-train", "--config", child, "--skip_test", "true", "--auto_resume"])
    assert cfg.skip_test is True and cfg.auto_resume is True  # base says False


def test_cli_never_overwrites_config_values_it_was_not_given(cfg_dir):
    _, cfg = parse(["meta-test", "--config", str(cfg_dir / "child.py")])
    assert cfg.use_bf16 is True  # the reference's store_true default would have reset this to False
    assert cfg.num_tasks == 2


def test_cfg_options_set_nested_keys_and_none(cfg_dir):
    _, cfg = parse(["meta-train", "--config", str(cfg_dir / "child.py"), "--cfg-options",
                    "schedule.peak_value=1e-2", "schedule.exponent=2", "meta_grad_clip=none", "num_tasks=3"])
    assert cfg.schedule["peak_value"] == 1e-2 and cfg.schedule["exponent"] == 2
    assert cfg.schedule["end_value"] == 1e-3
    assert cfg.meta_grad_clip is None and cfg.num_tasks == 3


@pytest.mark.parametrize("argv, needle", [
    (["--tsak", "x"], "unknown option '--tsak' (did you mean 'task'?)"),
    (["--num_tasks", "eight"], "bad value 'eight' for config key 'num_tasks': expected an integer >= 1"),
    (["--use_bf16", "maybe"], "config key 'use_bf16': expected true or false"),
    # the hand-designed optimizers, then the registered learned ones (a test file may register more of each)
    (["--optimizer", "adamm"], "expected one of adam, adamw, muadam, "),
    (["--optimizer", "adamm"], "small_fc_mlp, mup_small_fc_mlp, velo, mup_velo"),
    (["--optimizer", "adamm"], "(did you mean 'adam'?)"),
    (["--pes_std", "-1"], "config key 'pes_std': expected a number > 0"),
    (["--widths", "64,x"], "config key 'widths': expected a comma-separated list of integers"),
    (["--steps_per_jit", "7"], "expected a divisor of estimator.trunc_length=50"),
    (["--cfg-options", "schedul.peak_value=1"], "unknown config key 'schedul' (did you mean 'schedule'?)"),
])
def test_bad_cli_values_raise_one_line_errors(cfg_dir, argv, needle):
    with pytest.raises(ConfigError) as err:
        parse(["meta-train", "--config", str(cfg_dir / "child.py"), *argv])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_config_file_values(tmp_path):
    typo = write(tmp_path / "typo.py", "num_taks = 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'num_taks' in .*typo.py \(did you mean 'num_tasks'\?\)"):
        load_config(typo)
    wrong = write(tmp_path / "wrong.py", "num_tasks = 'eight'\n")
    with pytest.raises(ConfigError, match="bad value 'eight' for config key 'estimator.num_pairs'"):
        load_config(wrong)
    boolean = write(tmp_path / "bool.py", "use_bf16 = 1\n")
    with pytest.raises(ConfigError, match="config key 'use_bf16': expected true or false"):
        load_config(boolean)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.py")
    broken = write(tmp_path / "broken.py", "num_tasks = (\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(broken)


def test_config_is_read_only_and_replace_validates(cfg_dir):
    cfg = load_config(cfg_dir / "child.py")
    with pytest.raises(AttributeError):
        cfg.num_tasks = 3
    assert cfg.replace(num_tasks=5).num_tasks == 5 and cfg.num_tasks == 2
    with pytest.raises(ConfigError):
        cfg.replace(num_tasks=0)


def test_dumped_config_loads_back_identically(cfg_dir, tmp_path):
    _, cfg = parse(["meta-train", "--config", str(cfg_dir / "child.py"), "--meta_grad_clip", "1.0",
                    "--task", "a-w1-d1_x,b-w2-d1_x"])
    dumped = write(tmp_path / "dumped.py", dump_text(cfg))
    assert load_config(dumped).to_dict() == cfg.to_dict()
    assert isinstance(cfg, Config)


def run_cli(*argv):
    return subprocess.run([sys.executable, str(REPO / "src" / "main.py"), *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_bad_input_exits_2_with_one_line_on_stderr(cfg_dir):
    for argv in (["meta-train", "--config", str(cfg_dir / "child.py"), "--num_taks", "3"],
                 ["meta-test", "--config", str(cfg_dir / "missing.py")],
                 ["meta-train"],
                 ["nonsense"]):
        proc = run_cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_cli_help_lists_options():
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("meta-train", "meta-test", "sweep", "coord-check", "report"):
        assert command in top.stdout
        sub = run_cli(command, "--help")
        assert sub.returncode == 0, sub.stderr
        for key in ("--config", "--task", "--num_tasks", "--use_bf16", "--cfg-options"):
            assert key in sub.stdout, (command, key)
