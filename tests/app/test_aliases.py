"""The reference's flags, config names and run_type are accepted as documented aliases, one notice line each."""

from __future__ import annotations

import pytest

from mulo.app import aliases, cli
from mulo.errors import ConfigError

COMMANDS = list(cli.COMMANDS)
QUICK = ["--config", "config/meta_train/quickstart.py"]


def _parse(argv, capsys):
    args, cfg = cli.parse(argv)
    notes = capsys.readouterr().err.strip().splitlines()
    return args, cfg, notes


@pytest.mark.parametrize("flag", ["--train_project", "--test_project"])
def test_project_flags_set_wandb_project(flag, capsys):
    _, cfg, notes = _parse(["meta-train", *QUICK, flag, "mup-meta-training"], capsys)
    assert cfg.wandb_project == "mup-meta-training"
    assert notes == [f"note: {flag} is read as --wandb_project (the reference's "
                     f"meta-{'train' if 'train' in flag else 'test'} wandb project; mulo has one project key)"]


def test_project_flag_with_equals_sign(capsys):
    _, cfg, _ = _parse(["meta-train", *QUICK, "--test_project=abc"], capsys)
    assert cfg.wandb_project == "abc"


def test_needs_state_is_ignored_and_said_once(capsys):
    base = cli.parse(["meta-train", *QUICK])[1]
    capsys.readouterr()
    args, cfg, notes = _parse(["meta-train", *QUICK, "--needs_state", "--estimator.num_pairs", "3", "--needs_state",
                               "true"], capsys)
    assert cfg.num_tasks == 3 and cfg.replace(num_tasks=base.num_tasks) == base  # nothing else changed
    assert cfg != base
    assert len(notes) == 1 and notes[0].startswith("note: --needs_state ignored: muP scales are static")


def test_from_checkpoint_means_auto_resume_not_checkpoint(capsys):
    _, cfg, notes = _parse(["meta-train", *QUICK, "--from_checkpoint"], capsys)
    assert cfg.auto_resume is True and cfg.checkpoint is None
    assert notes == ["note: --from_checkpoint is read as --auto_resume true (continues the run's latest checkpoint, "
                     "as the reference's flag did)"]
    _, cfg, _ = _parse(["meta-train", *QUICK, "--from_checkpoint", "false"], capsys)
    assert cfg.auto_resume is False


def test_gradient_accumulation_steps_is_a_real_key(capsys):
    _, cfg, notes = _parse(["meta-test", "--config", "config/meta_test/cpu_fashionmnist.py",
                            "--gradient_accumulation_steps", "2"], capsys)
    assert cfg.gradient_accumulation_steps == 2 and notes == []


@pytest.mark.parametrize("flag, key, value", [("--test_checkpoint", "checkpoint", "some/theta.msgpack"),
                                              ("--tfds_data_dir", "data_dir", "/data/tfds"),
                                              ("--sweep_id", "study_name", "abc123")])
def test_value_flags(flag, key, value, capsys):
    _, cfg, notes = _parse(["meta-test", "--config", "config/meta_test/cpu_fashionmnist.py", flag, value], capsys)
    assert cfg[key] == value
    assert len(notes) == 1 and notes[0].startswith(f"note: {flag} is read as --{key} (")


def test_reference_config_name_maps_to_ours_and_picks_the_subcommand(capsys):
    args, cfg, notes = _parse(["--config", "config/meta_test/image-mlp-fmst_fedlagg-adafac.py", "--num_runs", "2"],
                              capsys)
    assert args.command == "meta-test" and args.config.endswith("config/meta_test/meta_test_base.py")
    assert cfg.num_runs == 2
    assert notes == ["note: config config/meta_test/image-mlp-fmst_fedlagg-adafac.py is the reference's; using "
                     "mulo's config/meta_test/meta_test_base.py",
                     "note: no subcommand given: running meta-test (from the config's folder meta_test/)"]


@pytest.mark.parametrize("config, command", [("config/meta_train/schedules/mxlr=3e-3_mnlr=1e-3_it=5000_clip.py",
                                              "meta-train"),
                                             ("config/sweeps/sweep_muadam.py", "sweep"),
                                             ("config/coord_check/mumlp_fashionmnist.py", "coord-check")])
def test_subcommand_from_the_config_folder(config, command, capsys):
    args, _, notes = _parse(["--config", config], capsys)
    assert args.command == command and notes == [f"note: no subcommand given: running {command} (from the "
                                                 f"config's folder {config.split('/')[1]}/)"]


def test_run_type(capsys):
    args, _, notes = _parse(["--config", "config/meta_test/cpu_fashionmnist.py", "--run_type", "benchmark"], capsys)
    assert args.command == "meta-test" and notes == ["note: no subcommand given: running meta-test (from --run_type)"]
    with pytest.raises(ConfigError, match="bad value 'bench' for the reference's --run_type"):
        cli.parse(["--config", "config/meta_test/cpu_fashionmnist.py", "--run_type", "bench"])
    with pytest.raises(ConfigError, match="--run_type says sweep but the subcommand is meta-test"):
        cli.parse(["meta-test", "--config", "config/meta_test/cpu_fashionmnist.py", "--run_type", "sweep"])


def test_our_own_spelling_is_left_alone():
    argv = ["meta-test", "--config", "config/meta_test/cpu_fashionmnist.py", "--wandb_project", "p", "--checkpoint",
            "x", "--use_bf16", "--auto_resume=true"]
    out, notes = aliases.translate(argv, COMMANDS)
    assert out == argv and notes == []


def test_a_real_typo_still_gets_our_suggestion():
    with pytest.raises(ConfigError, match="unknown option '--num_task'.*did you mean 'num_tasks'"):
        cli.parse(["meta-train", *QUICK, "--num_task", "2"])


def test_an_error_is_one_line_that_names_the_reference_flags_it_read(capsys):
    """Issue 28: a notice line and then the error were two lines where one was promised."""
    code = cli.main(["meta-train", *QUICK, "--needs_state", "--num_outer_steps", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: bad value 0 for config key 'num_outer_steps'")
    assert err[0].endswith("(the reference's spelling was read: --needs_state ignored)")


@pytest.mark.parametrize("argv, needle", [
    (["--needs_state=maybe"], "bad value 'maybe' for the reference's --needs_state: expected true or false"),
    (["--from_checkpoint=sometimes"], "bad value 'sometimes' for the reference's --from_checkpoint"),
    (["--test_project="], "the reference's --test_project needs a value"),
    (["--train_project", " "], "the reference's --train_project needs a value"),
    (["--test_checkpoint"], "the reference's --test_checkpoint needs a value"),
    (["--tfds_data_dir", "--seed", "1"], "the reference's --tfds_data_dir needs a value"),
])
def test_bad_values_of_reference_flags_are_one_line(argv, needle, capsys):
    code = cli.main(["meta-train", *QUICK, *argv, "--output_dir", "/nonexistent/never"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
