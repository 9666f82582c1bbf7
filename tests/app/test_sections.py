"""The config's component sections (optimizer, lo, estimator, truncation, task_options): validated against the
schema of the component their ``name`` picks, set from files, --cfg-options and ``--section.key``; today's flat keys
read into them with one notice each, silently from a run directory's config.py written by an older mulo."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mulo.app.cli import parse
from mulo.app.config import dump_text, load_config
from mulo.app.rundir import run_dir_path
from mulo.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
OLD_RUN = next((REPO / "runs" / "cpu_mulo_general").glob("meta-train_*"))  # written by main before sections
QUICK = ["--config", str(REPO / "config" / "meta_train" / "quickstart.py")]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_flat_keys_give_the_same_config_as_sections_with_one_notice_each(tmp_path):
    flat = write(tmp_path / "flat.py", """\
        _base_ = [%r]
        optimizer = "muadam"
        learning_rate = 3e-3
        beta2 = 0.99
        hidden_size = 8
        num_tasks = 2
        truncation_schedule = "constant"
        d_head = 16
        """ % str(REPO / "config" / "base.py"))
    ours = write(tmp_path / "ours.py", """\
        _base_ = [%r]
        optimizer = dict(name="muadam", learning_rate=3e-3, b2=0.99)
        lo = dict(hidden_size=8)
        estimator = dict(num_pairs=2)
        truncation = dict(name="constant")
        task_options = dict(d_head=16)
        """ % str(REPO / "config" / "base.py"))
    notes: list[str] = []
    a, b = load_config(flat, notices=notes), load_config(ours, notices=(quiet := []))
    assert a == b and quiet == []
    assert len(notes) == 7 and len(set(notes)) == 7
    assert "note: beta2 is read as optimizer.b2 (today's flat key; see README 'Configs')" in notes
    assert a.section("optimizer") == {"name": "muadam", "learning_rate": 3e-3, "warmup_steps": 0,
                                      "cosine_decay": False, "end_lr_ratio": 0.1, "b1": 0.9, "b2": 0.99}
    assert (a.optimizer, a.beta2, a.num_tasks, a.d_head) == ("muadam", 0.99, 2, 16)  # flat names still read


def test_a_run_directory_config_from_before_sections_loads_silently_and_names_the_same_run():
    notes: list[str] = []
    old = load_config(OLD_RUN / "config.py", notices=notes)
    assert notes == []
    new = load_config(REPO / "config" / "meta_train" / "cpu_mulo_general.py")
    for key in ("optimizer", "num_tasks", "trunc_length", "pes_std", "gradient_estimator", "truncation_schedule",
                "truncation_schedule_min_length", "random_initial_iteration_offset", "hidden_size",
                "adafac_step_mult", "adafac_exp_mult", "d_head", "task", "seed", "steps_per_jit"):
        assert old[key] == new[key], key
    assert old.section("lo") == new.section("lo") and old.section("estimator") == new.section("estimator")
    assert run_dir_path(old, "meta-train").name == OLD_RUN.name == run_dir_path(new, "meta-train").name


def test_dump_text_writes_sections_and_loads_back(tmp_path):
    cfg = load_config(REPO / "config" / "meta_train" / "cpu_mu_velo.py")
    text = dump_text(cfg)
    assert "\nlo = {'name': 'mup_velo'," in text and "\nhidden_size" not in text and "\nnum_tasks" not in text
    notes: list[str] = []
    assert load_config(write(tmp_path / "config.py", text), notices=notes) == cfg and notes == []


def test_section_keys_on_the_command_line_and_in_cfg_options():
    _, cfg = parse(["meta-train", *QUICK, "--lo.hidden_size", "8", "--cfg-options", "estimator.num_pairs=2",
                    "truncation.name=constant"])
    assert cfg.section("lo")["hidden_size"] == 8 and cfg.num_tasks == 2 and cfg.truncation_schedule == "constant"
    _, cfg = parse(["meta-test", *QUICK, "--optimizer.name", "adamw", "--optimizer.weight_decay", "0.1"])
    assert cfg.optimizer == "adamw" and cfg.section("optimizer")["weight_decay"] == 0.1


@pytest.mark.parametrize("argv, needle", [
    (["--lo.hiden_size", "8"], "unknown option '--lo.hiden_size' (did you mean 'lo.hidden_size'?)"),
    (["--lo.hidden_size", "0"], "bad value 0 for config key 'lo.hidden_size': expected an integer >= 1"),
    (["--lo.name", "mup_velo", "--lo.hidden_size", "8"],
     "unknown key 'lo.hidden_size' (did you mean 'ff_hidden_size'?): lo 'mup_velo' accepts name, impl, lstm_"),
    (["--optimizer.name", "sgd", "--optimizer.b1", "0.5"], "unknown key 'optimizer.b1': optimizer 'sgd' accepts"),
    (["--estimator.name", "nope"], "bad value 'nope' for config key 'estimator.name': expected one of es, pes"),
    (["--cfg-options", "lo=3"], "config section 'lo' is a dict: set its keys one by one (lo.KEY=VALUE"),
])
def test_bad_section_values_are_one_line(argv, needle):
    with pytest.raises(ConfigError) as err:
        parse(["meta-train", *QUICK, *argv])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_switching_component_drops_the_keys_an_earlier_layer_gave_the_old_one(tmp_path):
    """A recipe's muadam keys do not stop `--optimizer mup_small_fc_mlp` (the LO has no learning_rate)."""
    _, cfg = parse(["meta-test", "--config", str(REPO / "config" / "coord_check" / "mumlp_fashionmnist.py"),
                    "--optimizer.name", "lo"])
    assert cfg.section("optimizer") == {"name": "lo"} and cfg.optimizer == "mup_small_fc_mlp"
    _, cfg = parse(["meta-test", "--config", str(REPO / "config" / "coord_check" / "mumlp_fashionmnist.py"),
                    "--optimizer.name", "adam"])
    assert cfg.section("optimizer")["learning_rate"] == 1e-2  # adam has the key: kept


def test_init_theta_reads_the_theta_file_and_refuses_other_hyper_parameters(tmp_path):
    import jax
    import numpy as np

    from mulo.app.sections import build, init_theta
    from mulo.errors import CheckpointError
    from mulo.optimizers import save_theta

    cfg = load_config("config/meta_train/quickstart.py", cli={"output_dir": str(tmp_path / "out")})
    lo = build(cfg, "lo")
    assert init_theta(cfg, lo) is None  # not set: a random start
    theta = jax.tree.map(lambda x: x + 0.5, lo.init_theta(jax.random.PRNGKey(3)))
    save_theta(tmp_path / "mine.msgpack", lo, theta)
    got = init_theta(cfg.replace(init_theta=str(tmp_path / "mine.msgpack")), lo)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(theta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = build(cfg.replace(lo={"step_mult": 0.5}), "lo")
    save_theta(tmp_path / "other.msgpack", other, theta)
    with pytest.raises(ConfigError, match=r"lo.step_mult=0.5 \(config: 0.01\)"):
        init_theta(cfg.replace(init_theta=str(tmp_path / "other.msgpack")), lo)
    with pytest.raises(CheckpointError, match="^init_theta: checkpoint not found"):
        init_theta(cfg.replace(init_theta=str(tmp_path / "none.msgpack")), lo)
    assert not (tmp_path / "out").exists()
