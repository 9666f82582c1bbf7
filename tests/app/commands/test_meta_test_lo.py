"""meta-test with a learned optimizer: θ saved with the optimizers' save_theta in meta-train's run layout, loaded
from a local checkpoint or through a fake wandb API; the LO's hyper-parameters come from the checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import jax
import pytest

from mulo.app.cli import main as cli_main
from mulo.app.config import load_config
from mulo.app.commands import meta_test as mt
from mulo.errors import CheckpointError
from mulo.app.sections import optimizer_source
from mulo.evaluate.lo_source import resolve_checkpoint
from mulo.io import read_jsonl
from mulo.optimizers import build_learned, save_theta

REPO_ROOT = Path(__file__).resolve().parents[3]
BASE_CFG = str(REPO_ROOT / "config" / "meta_test" / "meta_test_base.py")

T16 = "mumlp-w16-d2_fashionmnist-28x28x1"
SMALL = ["--num_inner_steps", "20", "--local_batch_size", "32", "--test_interval", "10", "--test_steps_per_jit",
         "10", "--max_eval_examples", "100", "--eval_batch_size", "100", "--progress", "false", "--wandb_mode",
         "disabled"]


@pytest.fixture(scope="module")
def lo_run(tmp_path_factory):
    """A meta-train-like run directory with θ of a hidden-size-8 μLO (step_mult 0.005): theta/theta_step5.* and
    checkpoints/latest = 5."""
    run = tmp_path_factory.mktemp("lo") / "meta-train_run"
    cfg = load_config(None, cli={"optimizer": "mup_small_fc_mlp", "hidden_size": 8, "adafac_step_mult": 0.005})
    lo = build_learned(cfg)
    theta = lo.init_theta(jax.random.PRNGKey(7))
    (run / "theta").mkdir(parents=True)
    path = Path(save_theta(str(run / "theta" / "theta_step5"), lo, theta, extra={"step": 5}) or
                run / "theta" / "theta_step5")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest").write_text("5\n")
    return run, path, lo, theta


def _losses(d: Path) -> list[float]:
    return [r["train_loss"] for r in read_jsonl(d / "metrics.jsonl") if "train_loss" in r]


def _same_theta(a, b) -> bool:
    import numpy as np

    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def local_run(lo_run, tmp_path_factory):
    """The meta-test command with --checkpoint <meta-train run dir> (CLI LO keys different from the checkpoint's)."""
    run, path, lo, theta = lo_run
    out = tmp_path_factory.mktemp("local")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli_main(["meta-test", "--config", BASE_CFG, "--optimizer",
                         "mup_small_fc_mlp", "--checkpoint", str(run), "--adafac_step_mult", "0.5", "--task", T16,
                         "--num_runs", "1", "--output_dir", str(out), *SMALL]) == 0
    (run_dir,) = out.iterdir()
    (run_dir / "stdout.txt").write_text(printed.getvalue())
    return run_dir


def test_checkpoint_forms_resolve_to_the_saved_theta(lo_run):
    run, path, lo, theta = lo_run
    for form in (run, run / "checkpoints" / "latest", run / "checkpoints", path):
        assert resolve_checkpoint(form) == path
    cfg = load_config(None, cli={"optimizer": "mup_small_fc_mlp", "checkpoint": str(run / "checkpoints" / "latest"),
                                 "hidden_size": 64, "adafac_step_mult": 0.5})
    source = optimizer_source(cfg)
    loaded_lo, loaded_theta = source.learned
    assert source.name == "mup_small_fc_mlp" and loaded_lo.hparams == lo.hparams  # not the CLI's 64 / 0.5
    assert source.info["hparams"]["hidden_size"] == 8
    assert _same_theta(loaded_theta, theta)


def test_optimizer_source_reads_only_the_sections(lo_run):
    """mulo.evaluate.lo_source builds from the two sections it is given, no Config: a hand-designed optimizer from the
    optimizer section's values, a learned one from θ (the lo section's hyper-parameters are not used), and a θ of
    another LO than lo.name is refused."""
    from mulo.errors import ConfigError
    from mulo.evaluate import lo_source

    run, path, lo, theta = lo_run
    hand = lo_source.optimizer_source({"name": "sgd", "learning_rate": 0.25, "momentum": 0.0}, {"name": "x"},
                                      num_steps=3, record={"mup_input_mult": 2.0})
    assert hand.name == "sgd" and hand.learned is None
    assert hand.info["hparams"]["learning_rate"] == 0.25 and hand.info["hparams"]["mup_input_mult"] == 2.0
    with pytest.raises(ConfigError, match="hand-designed and takes no checkpoint"):
        lo_source.optimizer_source({"name": "sgd"}, {}, num_steps=3, checkpoint=str(run))
    learned = lo_source.optimizer_source({"name": "lo"}, {"name": "mup_small_fc_mlp", "impl": "reference",
                                                          "hidden_size": 64}, num_steps=3, checkpoint=str(run))
    assert learned.learned[0].hparams == lo.hparams and learned.learned[0].impl == "reference"
    with pytest.raises(ConfigError, match="is a learned optimizer: pass --checkpoint"):
        lo_source.optimizer_source({"name": "lo"}, {"name": "mup_small_fc_mlp"}, num_steps=3)
    with pytest.raises(CheckpointError, match="lo.name is 'small_fc_mlp'"):
        lo_source.optimizer_source({"name": "lo"}, {"name": "small_fc_mlp"}, num_steps=3, checkpoint=str(path))


def test_meta_test_from_local_checkpoint_uses_its_hparams(lo_run, local_run):
    run, path, lo, theta = lo_run
    run_dir = local_run
    assert "mup_small_fc_mlp8_" in run_dir.name  # named after the checkpoint's hidden size
    manifest = json.loads((run_dir / "meta_test.json").read_text())
    info = manifest["optimizer_info"]
    assert Path(info["checkpoint"]) == path.resolve()
    assert info["hparams"]["hidden_size"] == 8 and info["hparams"]["step_mult"] == pytest.approx(0.005)
    saved = load_config(run_dir / "config.py")
    assert saved.hidden_size == 8 and saved.adafac_step_mult == pytest.approx(0.005)
    # the user is told that the command line's step_mult was not used
    assert "ignoring --adafac_step_mult 0.5" in (run_dir / "stdout.txt").read_text()
    losses = _losses(run_dir / T16 / "seed0")
    assert len(losses) == 20 and all(map(math.isfinite, losses))


class _File:
    def __init__(self, name, src):
        self.name, self.src = name, Path(src)

    def download(self, root, replace=False):
        dst = Path(root) / self.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(self.src.read_bytes())


class _Api:
    def __init__(self, files):
        self.files = files

    def run(self, path):
        if path != "ent/proj/run9":
            raise ValueError(f"Could not find run {path}")
        files = self.files
        return type("Run", (), {"files": lambda self: iter(files)})()


def test_meta_test_from_fake_wandb(lo_run, local_run, tmp_path):
    run, path, lo, theta = lo_run
    api = _Api([_File("wandb-summary.json", path), _File("theta/" + path.name, path)])
    cfg = load_config(BASE_CFG, cli={
        "optimizer": "mup_small_fc_mlp", "wandb_checkpoint_id": "ent/proj/run9", "task": [T16], "num_runs": 1,
        "num_inner_steps": 20, "local_batch_size": 32, "test_interval": 10, "test_steps_per_jit": 10,
        "max_eval_examples": 100, "eval_batch_size": 100, "progress": False, "output_dir": str(tmp_path)})
    assert mt.main(cfg, None, api_factory=lambda: api) == 0
    downloaded = tmp_path / "wandb_checkpoints" / "ent_proj_run9" / "theta" / path.name
    assert downloaded.read_bytes() == path.read_bytes()
    (run_dir,) = [d for d in tmp_path.iterdir() if d.name.startswith("meta-test")]
    info = json.loads((run_dir / "meta_test.json").read_text())["optimizer_info"]
    assert info["wandb_checkpoint_id"] == "ent/proj/run9" and info["hparams"]["hidden_size"] == 8
    # the same θ as the local checkpoint: the same training
    assert _losses(run_dir / T16 / "seed0") == _losses(local_run / T16 / "seed0")
    # an unknown run is one clear line
    bad = cfg.replace(wandb_checkpoint_id="ent/proj/nope")
    with pytest.raises(CheckpointError, match="cannot fetch wandb run ent/proj/nope"):
        mt.main(bad, None, api_factory=lambda: api)


def test_corrupt_theta_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "theta_final.msgpack"
    bad.write_bytes(b"not a theta file")
    code = cli_main(["meta-test", "--config", BASE_CFG, "--optimizer",
                     "mup_small_fc_mlp", "--checkpoint", str(bad), "--task", T16, "--output_dir",
                     str(tmp_path / "o"), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err
