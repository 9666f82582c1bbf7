"""A meta-training checkpoint written by main at 1c36316 restores and resumes bit-exactly: θ, the outer Adam state,
the estimators' states, the skipped-step count and the metrics are what that code computed when resuming it
(tests/fixtures/meta_ckpt_v1, written by its make_fixture.py: a toy run stopped after outer step 3 of 6, whose step
2 had a non-finite meta-gradient, skipped and counted; its identity.json names the optimizer "toy_lo", the LO the run
trained: main wrote the config's optimizer key there, which a real meta-train run always sets to the LO it trains,
while the fixture's toy run had left the default). It guards the checkpoint layout (the order and shapes of the
state's leaves), identity.json and the outer step against changes that old runs could not resume through."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np

from mulo.app.config import load_config
from mulo.io import read_jsonl
from tests.meta.test_toys import TOY_META_CONFIG, QuadraticTask, ToyLO, train_flat

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "meta_ckpt_v1"
CONFIG = dict(TOY_META_CONFIG, num_tasks=3, num_outer_steps=6)
TIMING = ("time", "step_time_s", "inner_steps_per_s")  # wall-clock entries


def _tasks():
    return [QuadraticTask(dim=3, noise=0.5, init_noise=0.3, name="quad-a"),
            QuadraticTask(dim=2, noise=0.2, init_noise=0.3, name="quad-b")]


def _assert_leaves(tree, expected, prefix: str) -> None:
    leaves = jax.tree.leaves(tree)
    assert len(leaves) == len([k for k in expected.files if k.startswith(prefix + "_")])
    for i, x in enumerate(leaves):
        want = expected[f"{prefix}_{i}"]
        assert np.asarray(x).dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(x), want)


def test_a_checkpoint_written_by_main_at_1c36316_resumes_bit_exactly(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    cfg = load_config(None, cli=dict(CONFIG, auto_resume=True))
    state = train_flat(cfg, _tasks(), ToyLO(), run, handle_signals=False)["state"]
    expected = np.load(FIXTURE / "expected.npz")
    assert int(state.step) == 6
    _assert_leaves(state.theta, expected, "theta")
    _assert_leaves(state.opt_state, expected, "opt")  # Adam's moments and count
    _assert_leaves(state.estimators, expected, "est")  # inner states, PES accumulators
    assert int(state.skipped) == int(expected["skipped"]) == 1
    recs = [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(run / "metrics.jsonl")]
    assert recs == json.loads((FIXTURE / "expected_metrics.json").read_text())  # lr, skipped_steps, losses, norms
    assert [r["skipped_steps"] for r in recs] == [0, 1, 1, 1, 1, 1]
