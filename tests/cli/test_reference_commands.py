"""Every command of the reference implementation's README runs here as it is written, with only paths and dataset
names changed (ImageNet -> Fashion-MNIST, LM1B -> Tiny Shakespeare, the wandb checkpoint served by a fake wandb API)
and tiny settings appended (widths, steps, batch sizes), so a researcher's commands carry over."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from mulo.app import cli
from mulo.app.config import load_config
from mulo.app.commands import meta_test as mt

REPO = Path(__file__).resolve().parents[2]

# The reference README's commands, verbatim (its "Meta-training Quickstart", "Test VeLO", "Test MuLO" and "Sweep MuAdam
# Learning Rates" blocks).
META_TRAIN_S = r"""CUDA_VISIBLE_DEVICES=0 python src/main.py \
--config config/meta_train/schedules/mxlr=3e-3_mnlr=1e-3_it=5000_clip.py \
--num_tasks 8 \
--local_batch_size 4096 \
--train_project mup-meta-training \
--optimizer mup_small_fc_mlp \
--needs_state \
--steps_per_jit 2 \
--name_suffix _s-mumlp_it=5000_mxlr=3e-3_stepm=01_tasks=8 \
--task mumlp-w128-d3_imagenet-32x32x3 \
--prefetch_batches 20 \
--adafac_step_mult 0.01"""

META_TRAIN_M = r"""CUDA_VISIBLE_DEVICES=0 python src/main.py \
--config config/meta_train/schedules/mxlr=3e-3_mnlr=1e-3_it=5000_clip.py \
--num_tasks 8 \
--local_batch_size 4096 \
--train_project mup-meta-training \
--optimizer mup_small_fc_mlp \
--needs_state \
--steps_per_jit 2 \
--name_suffix _m-mumlp_it=5000_mxlr=3e-3_stepm=01_tasks=8 \
--prefetch_batches 20 \
--adafac_step_mult 0.01 \
--task mumlp-w1024-d3_imagenet-32x32x3,mumlp-w512-d3_imagenet-32x32x3,mumlp-w128-d3_imagenet-32x32x3 \
--auto_resume"""

TEST_VELO = r"""CUDA_VISIBLE_DEVICES=0 python src/main.py \
--config config/meta_test/image-mlp-fmst_fedlagg-adafac.py \
--name_suffix _m_mup_final \
--local_batch_size 128 \
--test_project mup-meta-testing \
--task mutransformer-w2048-d3_lm1b-s64-v32k \
--optimizer mup_small_fc_mlp \
--wandb_checkpoint_id eb-lab/mup-meta-training/woz3g9l0 \
--num_runs 5 \
--num_inner_steps 5000 \
--needs_state \
--adafac_step_mult 0.01 \
--gradient_accumulation_steps 1 \
--test_interval 100"""

TEST_MULO = r"""CUDA_VISIBLE_DEVICES=0 python src/main.py \
--config config/meta_test/image-mlp-fmst_fedlagg-adafac.py \
--name_suffix _m_mup_final \
--local_batch_size 128 \
--test_project mup-meta-testing \
--task mutransformer-w2048-d3_lm1b-s64-v32k \
--optimizer mup_small_fc_mlp \
--wandb_checkpoint_id <WANDB PATH TO CHECKPOINT> \
--num_runs 5 \
--num_inner_steps 5000 \
--needs_state \
--adafac_step_mult 0.01 \
--gradient_accumulation_steps 1 \
--test_interval 100 \
--use_bf16"""

SWEEP_MUADAM = r"""CUDA_VISIBLE_DEVICES=0 python src/main.py \
    --config config/sweeps/sweep_muadam.py \
    --name_suffix _muadam_sweep \
    --local_batch_size 4096 \
    --test_project mup-meta-testing \
    --task "mumlp-w1024-d3_imagenet-32x32x3" \
    --optimizer muadam \
    --num_runs 1 \
    --learning_rate 3e-4 \
    --num_inner_steps 1000 \
    --gradient_accumulation_steps 1 \
    --needs_state \
    --mup_input_mult 1 \
    --mup_output_mult 1 \
    --mup_hidden_lr_mult 1 \
    --test_interval 50 \
"""

# what changes: dataset names, widths/depths (tiny), and the README's placeholder for a wandb run
RENAMES = [("imagenet-32x32x3", "fashionmnist-28x28x1"), ("lm1b-s64-v32k", "tinyshakespeare-s16-vbyte"),
           ("mumlp-w1024-d3", "mumlp-w32-d1"), ("mumlp-w512-d3", "mumlp-w24-d1"), ("mumlp-w128-d3", "mumlp-w16-d1"),
           ("mutransformer-w2048-d3", "mutransformer-w32-d1"), ("<WANDB PATH TO CHECKPOINT>", "ent/proj/mulo_s")]
COMMON = ["--progress", "false", "--wandb_mode", "disabled", "--max_eval_examples", "16", "--eval_batch_size", "16"]
TINY_META_TRAIN = ["--num_outer_steps", "2", "--num_tasks", "1", "--trunc_length", "2", "--local_batch_size", "8",
                   "--save_iter", "1", "--prefetch_batches", "1", "--hidden_size", "4"]
TINY_META_TEST = ["--num_runs", "1", "--num_inner_steps", "4", "--test_interval", "2", "--local_batch_size", "4",
                  "--test_steps_per_jit", "2", "--d_head", "16"]
TINY_SWEEP = ["--sweep_trials", "1", "--num_inner_steps", "4", "--test_interval", "2", "--local_batch_size", "8",
              "--test_steps_per_jit", "2"]


def shell_words(command: str) -> list[str]:
    """The words the shell passes on (a backslash-newline continues the line)."""
    return shlex.split(command.replace("\\\n", " "))


def argv_of(command: str, tiny: list[str], out: Path) -> list[str]:
    for old, new in RENAMES:
        command = command.replace(old, new)
    words = shell_words(command)
    assert words[:3] == ["CUDA_VISIBLE_DEVICES=0", "python", "src/main.py"]
    return words[3:] + tiny + COMMON + ["--output_dir", str(out)]


class _File:
    def __init__(self, name: str, src: Path):
        self.name, self.src = name, src

    def download(self, root, replace=False):
        (Path(root) / self.name).write_bytes(self.src.read_bytes())


class _Api:
    """wandb's public API for the two runs the README names: their theta files are the meta-trained ones here."""

    def __init__(self, thetas: dict[str, Path]):
        self.thetas = thetas

    def run(self, path):
        theta = self.thetas[path]
        return type("Run", (), {"files": lambda self: iter([_File("output.log", theta),
                                                           _File("theta_final.msgpack", theta)])})()


def _run(argv, capsys) -> tuple[str, list[str]]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out, captured.err.strip().splitlines()


NOTES = {"--train_project": "note: --train_project is read as --wandb_project",
         "--test_project": "note: --test_project is read as --wandb_project",
         "--needs_state": "note: --needs_state ignored",
         "image-mlp-fmst": "note: config config/meta_test/image-mlp-fmst_fedlagg-adafac.py is the reference's; using "
                           "mulo's config/meta_test/meta_test_base.py",
         "no subcommand": "note: no subcommand given: running "}


def _check_notes(command: str, err: list[str], expected_command: str) -> None:
    notes = [line for line in err if line.startswith("note: ")]
    for flag, text in NOTES.items():
        wanted = flag in command or flag == "no subcommand"
        hits = [n for n in notes if n.startswith(text)]
        assert len(hits) == (1 if wanted else 0), (flag, notes)
    assert f"note: no subcommand given: running {expected_command} (from the config's folder" in "\n".join(notes)
    assert not [line for line in err if line.startswith("error")]


def test_the_reference_readme_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the README's config paths are relative to the repository
    out = tmp_path / "checkpoints"

    # meta-training: μLO_S (one task) and μLO_M (three widths, --auto_resume)
    runs = {}
    for label, command in (("s", META_TRAIN_S), ("m", META_TRAIN_M)):
        stdout, err = _run(argv_of(command, TINY_META_TRAIN, out), capsys)
        _check_notes(command, err, "meta-train")
        assert "[meta-train] backend " in stdout and "compiling (first step only)" in stdout
        (run,) = [d for d in out.iterdir() if d.name.startswith("meta-train") and f"_{label}-mumlp_it=5000" in d.name]
        cfg = load_config(run / "config.py")
        assert cfg.wandb_project == "mup-meta-training" and cfg.adafac_step_mult == 0.01
        assert cfg.schedule["peak_value"] == 3e-3 and cfg.num_outer_steps == 2
        assert (run / "theta_final.msgpack").is_file()
        runs[label] = run
    assert len(load_config(runs["m"] / "config.py").task) == 3

    # meta-testing: "Test VeLO" (actually μLO_M's wandb run) and "Test MuLO" (bf16), both from wandb
    api = _Api({"eb-lab/mup-meta-training/woz3g9l0": runs["m"] / "theta_final.msgpack",
                "ent/proj/mulo_s": runs["s"] / "theta_final.msgpack"})
    monkeypatch.setattr(mt, "wandb_api", lambda: api)
    for command, source, bf16 in ((TEST_VELO, "m", False), (TEST_MULO, "s", True)):
        stdout, err = _run(argv_of(command, TINY_META_TEST, out), capsys)
        _check_notes(command, err, "meta-test")
        assert "[meta-test] backend " in stdout and "compiling (first step only)" in stdout
        run = next(d for d in out.iterdir() if d.name.startswith("meta-test") and
                   json.loads((d / "meta_test.json").read_text())["optimizer_info"].get("checkpoint", "").find(
                       f"{'woz3g9l0' if source == 'm' else 'mulo_s'}") >= 0)
        assert run.name.endswith("_m_mup_final")
        cfg = load_config(run / "config.py")
        assert cfg.wandb_project == "mup-meta-testing" and cfg.use_bf16 is bf16 and cfg.hidden_size == 4
        assert cfg.task == ["mutransformer-w32-d1_tinyshakespeare-s16-vbyte"] and cfg.gradient_accumulation_steps == 1
        summary = json.loads(next(run.glob("*/seed0/summary.json")).read_text())
        assert summary["steps_completed"] == 4 and not summary["diverged"]

    # the MuAdam sweep (one trial of the 500-point grid)
    stdout, err = _run(argv_of(SWEEP_MUADAM, TINY_SWEEP, out), capsys)
    _check_notes(SWEEP_MUADAM, err, "sweep")
    (sweep,) = [d for d in out.iterdir() if d.name.startswith("sweep_muadam")]
    assert sweep.name.endswith("_muadam_sweep") and (sweep / "best_config.py").is_file()
    assert load_config(sweep / "config.py").wandb_project == "mup-meta-testing"


@pytest.mark.parametrize("command", [META_TRAIN_S, TEST_VELO, SWEEP_MUADAM])
def test_each_reference_command_parses_unchanged(command, capsys):
    """Without any change at all (ImageNet / LM1B names included), every README command parses into a valid
    config of the right subcommand: no flag of the reference stops it."""
    args, cfg = cli.parse(shell_words(command)[3:])
    assert args.command in ("meta-train", "meta-test", "sweep")
    assert cfg.wandb_project in ("mup-meta-training", "mup-meta-testing")
