"""Meta-training on a mixture of task families (src/mulo/meta/train.py, outer.py; report_meta_train.py): the
per-task meta-loss normalisation, per-task batch sizes, per-family logging and plots, and a bit-exact resume."""

from __future__ import annotations

import json
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mulo.app.config import load_config, parse_cli_value
from mulo.errors import CheckpointError, ConfigError
from mulo.evaluate import report_meta_train as rmt
from mulo.io import read_jsonl
from mulo.meta import outer
from mulo.meta.mixture import task_family
from mulo.app.sections import meta_trainer
from mulo.meta.trainer import _key
from mulo.tasks.names import parse_task_name
from tests.meta.test_toys import TOY_META_CONFIG, QuadraticTask, ToyLO, train_flat

BASE = dict(TOY_META_CONFIG, num_tasks=2)


def _cfg(**kw):
    return load_config(None, cli={**BASE, **kw})


def _mixed(noise=0.5):
    """Two 'quad' tasks and one 'bowl' task: two families by name."""
    return [QuadraticTask(dim=3, noise=noise, name="quad-a"), QuadraticTask(dim=2, noise=noise, name="quad-b"),
            QuadraticTask(dim=2, noise=noise, name="bowl-c")]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _run(trainer, state, steps):
    streams = trainer.streams(int(state.step))
    try:
        out = []
        for _ in range(steps):
            state, metrics = trainer.step(state, streams)
            out.append(metrics)
        return state, out
    finally:
        for it in streams:
            it.close()


def test_combine_meta_gradients_divides_each_task_by_its_scale():
    grads = ({"w": jnp.array([2.0, 4.0])}, {"w": jnp.array([1.0, -3.0])})
    np.testing.assert_allclose(outer.combine_meta_gradients(grads)["w"], [1.5, 0.5])  # the plain mean
    # (2/2 + 1/0.5) / 2 = 1.5 and (4/2 - 3/0.5) / 2 = -2
    np.testing.assert_allclose(outer.combine_meta_gradients(grads, (2.0, 0.5))["w"], [1.5, -2.0])
    with pytest.raises(ValueError, match="1 loss scales for 2"):
        outer.combine_meta_gradients(grads, (2.0,))


def test_init_loss_scale_is_the_meta_loss_at_initialisation_and_scales_the_step():
    # noise 0: targets x = 0 and params w = v = 1, so loss = ½ Σ_j h_j + ½ d² with h = linspace(0.5, 2, d):
    # d = 3: ½ (0.5 + 1.25 + 2) + 4.5 = 6.375; d = 2: ½ (0.5 + 2) + 2 = 3.25
    tasks = [QuadraticTask(dim=3, name="quad-a"), QuadraticTask(dim=2, name="bowl-b")]
    norm = meta_trainer(_cfg(meta_loss_norm="init_loss"), tasks, ToyLO())
    assert norm.loss_scales == pytest.approx((6.375, 3.25), rel=1e-6)
    assert meta_trainer(_cfg(), tasks, ToyLO()).loss_scales is None  # the default: the plain mean

    # the outer step applies mean_j ĝ_j / c_j: recompute each task's estimate from the same keys and data
    tasks = _mixed()
    trainer = meta_trainer(_cfg(meta_loss_norm="init_loss", meta_grad_clip=None), tasks, ToyLO())
    state = trainer.init_state()
    streams = trainer.streams(0)
    try:
        grads = [est.estimate(state.theta, st, _key(trainer.settings.seed, 2, 0, j), streams[j])[0]
                 for j, (est, st) in enumerate(zip(trainer.estimators, state.estimators))]
    finally:
        for it in streams:
            it.close()
    _, (metrics,) = _run(trainer, state, 1)
    expected = outer.combine_meta_gradients(grads, trainer.loss_scales)
    plain = outer.combine_meta_gradients(grads)
    norm_of = lambda t: float(np.sqrt(sum(np.sum(np.square(x)) for x in _leaves(t))))  # noqa: E731
    assert metrics["meta_grad_norm"] == pytest.approx(norm_of(expected), rel=1e-5)
    assert abs(norm_of(expected) - norm_of(plain)) > 1e-3 * norm_of(plain)  # the scales do change the step


def test_meta_loss_is_logged_per_family():
    trainer = meta_trainer(_cfg(meta_loss_norm="init_loss"), _mixed(), ToyLO())
    _, (m,) = _run(trainer, trainer.init_state(), 1)
    c = {t.name: m[f"loss_scale/{t.name}"] for t in _mixed()}
    assert c == pytest.approx(dict(zip(c, trainer.loss_scales)))
    assert m["meta_loss_family/quad"] == pytest.approx(
        (m["meta_loss/quad-a"] / c["quad-a"] + m["meta_loss/quad-b"] / c["quad-b"]) / 2, rel=1e-6)
    assert m["meta_loss_family/bowl"] == pytest.approx(m["meta_loss/bowl-c"] / c["bowl-c"], rel=1e-6)
    assert m["meta_loss"] == pytest.approx(np.mean([m[f"meta_loss/{t}"] for t in c]), rel=1e-6)  # raw, as before
    # without normalisation: the families' plain means, and no scales logged
    trainer = meta_trainer(_cfg(), _mixed(), ToyLO())
    _, (p,) = _run(trainer, trainer.init_state(), 1)
    assert p["meta_loss_family/quad"] == pytest.approx((p["meta_loss/quad-a"] + p["meta_loss/quad-b"]) / 2)
    assert not any(k.startswith("loss_scale/") for k in p)
    # real tasks are grouped by their registered family
    for name, family in (("mumlp-w32-d3_fashionmnist-28x28x1", "mlp"),
                         ("mutransformer-w64-d2_tinyshakespeare-s64-vbyte", "transformer"),
                         ("muvit-w64-d3-p7_fashionmnist-28x28x1", "vit")):
        assert task_family(types.SimpleNamespace(spec=parse_task_name(name), name=name)) == family


def test_task_batch_sizes_shape_each_task_and_bad_values_are_one_line_errors():
    trainer = meta_trainer(_cfg(task_batch_sizes=[4, 2, 6]), _mixed(), ToyLO())
    assert [trainer.chunk_shape(j) for j in range(3)] == [(2, 2, 4), (2, 2, 2), (2, 2, 6)]
    streams = trainer.streams(0)
    try:
        assert [next(s)["train"]["x"].shape for s in streams] == [(2, 2, 4, 3), (2, 2, 2, 2), (2, 2, 6, 2)]
    finally:
        for it in streams:
            it.close()
    with pytest.raises(ConfigError, match=r"one batch size per task \(3 tasks\)"):
        meta_trainer(_cfg(task_batch_sizes=[4, 2]), _mixed(), ToyLO())
    for key, value in (("task_batch_sizes", "4,0"), ("task_batch_sizes", "a"), ("task_batch_sizes", ""),
                       ("meta_loss_norm", "mean")):  # as typed on the command line
        with pytest.raises(ConfigError, match=f"config key '{key}'"):
            parse_cli_value(key, value)
    assert parse_cli_value("task_batch_sizes", "none") is None and parse_cli_value("task_batch_sizes", "8,4") == [8, 4]


def test_a_mixed_family_run_resumes_bit_exactly(tmp_path):
    cfg = _cfg(num_outer_steps=4, meta_loss_norm="init_loss", task_batch_sizes=[4, 2, 3])
    full = train_flat(cfg, _mixed(), ToyLO(), tmp_path / "full", handle_signals=False)
    part = train_flat(cfg, _mixed(), ToyLO(), tmp_path / "resumed", stop_after=2, handle_signals=False)
    assert part["step"] == 2
    for changed in (dict(meta_loss_norm="none"), dict(task_batch_sizes=[4, 2, 2])):  # not silently another run
        with pytest.raises(CheckpointError, match="does not match this run"):
            train_flat(cfg.replace(auto_resume=True, **changed), _mixed(), ToyLO(), tmp_path / "resumed",
                  handle_signals=False)
    rest = train_flat(cfg.replace(auto_resume=True), _mixed(), ToyLO(), tmp_path / "resumed", handle_signals=False)
    assert rest["step"] == 4
    for a, b in zip(_leaves(full["state"]), _leaves(rest["state"])):
        np.testing.assert_array_equal(a, b)
    recs, full_recs = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("resumed", "full"))
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for key in ("meta_loss_family/quad", "meta_loss_family/bowl", "meta_loss/bowl-c", "loss_scale/quad-a"):
        assert [r[key] for r in recs] == [r[key] for r in full_recs]
    ident = json.loads((tmp_path / "resumed" / "checkpoints" / "identity.json").read_text())
    assert ident["meta_loss_norm"] == "init_loss" and ident["task_batch_sizes"] == [4, 2, 3]

    # report: the per-family figure and table next to the per-task one
    records = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    fams = rmt.family_curves(records)
    assert sorted(fams) == ["bowl", "quad"] and list(fams["quad"][0]) == [1, 2, 3, 4]
    np.testing.assert_allclose(fams["bowl"][1], [r["meta_loss_family/bowl"] for r in records])
    out = tmp_path / "report"
    out.mkdir()
    text, fig = rmt.meta_train_section(tmp_path / "full", out, read_jsonl)
    fam_fig = fig.replace("meta_loss_", "meta_loss_families_", 1)
    assert (out / fig).is_file() and (out / fam_fig).is_file() and f"]({fam_fig})" in text
    assert "| family |" in text and "| quad |" in text and "| bowl-c |" in text
    assert not any(k.startswith("meta_loss_family") for k in rmt.meta_loss_curves(records))  # tasks apart


def test_runs_from_before_the_new_keys_keep_their_identity():
    ident = meta_trainer(_cfg(), _mixed(), ToyLO()).identity()
    assert "meta_loss_norm" not in ident and "task_batch_sizes" not in ident


REPO = Path(__file__).resolve().parents[2]


def test_heldout_suite_never_touches_the_meta_training_tasks_and_sweeps_its_narrowest_widths():
    from mulo.tasks.names import parse_task_name as parse

    general = load_config(REPO / "config" / "meta_train" / "cpu_mulo_general_warm.py")  # the shipped θ's recipe
    assert general.init_theta == "pretrained:cpu_mulo_m_fmnist"
    start = load_config(REPO / "pretrained" / "cpu_mulo_m_fmnist.config.py")  # the θ it starts from
    mixture = [parse(t, general.d_head) for t in general.task]
    trained = mixture + [parse(t, start.d_head) for t in start.task]
    widest = {}
    for spec in mixture:
        widest[spec.family] = max(widest.get(spec.family, 0), spec.width)
    assert set(widest) == {"mlp", "transformer", "vit"} and general.meta_loss_norm == "init_loss"
    lineage = max(s.width for s in trained if s.family == "mlp")  # 128: cpu_mulo_m_fmnist's widest depth-3 MLP
    rows = sorted((REPO / "config" / "meta_test" / "heldout").glob("*.py"))
    assert {r.stem for r in rows} == {"mlp_depth8", "transformer", "vit", "horizon5x"}
    for row in rows:
        cfg = load_config(row)
        specs = [parse(t, cfg.d_head) for t in cfg.task]
        assert not {s.name for s in specs} & {s.name for s in trained}
        assert all(s.width > widest[s.family] for s in specs), row.stem  # wider than any task of the mixture
        assert all(s.width >= lineage for s in specs if s.family == "mlp"), row.stem  # and than the start's
        if row.stem in ("transformer", "vit"):  # the 4x (and 16x) the meta-trained width
            assert sorted(s.width // widest[s.family] for s in specs) == ([4, 16] if row.stem == "transformer"
                                                                          else [4])
        sweep = load_config(REPO / "config" / "sweeps" / "heldout" / row.name)
        (swept,) = [parse(t, sweep.d_head) for t in sweep.task]
        narrowest = min(specs, key=lambda s: s.width)
        assert (swept.model, swept.depth, swept.dataset) == (narrowest.model, narrowest.depth, narrowest.dataset)
        assert swept.width <= narrowest.width and sweep.optimizer == "muadam"
        for key in ("local_batch_size", "num_inner_steps", "tinyshakespeare_path", "d_head"):
            assert sweep[key] == cfg[key], (row.stem, key)
        if any(s.family == "transformer" for s in specs):  # text the meta-training never read
            assert cfg.tinyshakespeare_path.endswith("second_half.txt")
            assert general.tinyshakespeare_path.endswith("first_half.txt")
    assert load_config(REPO / "config" / "meta_test" / "heldout" / "horizon5x.py").num_inner_steps == \
        5 * general.num_inner_steps


def test_tinyshakespeare_halves_are_disjoint_and_cover_the_text():
    import importlib.util

    spec = importlib.util.spec_from_file_location("split_ts", REPO / "scripts" / "split_tinyshakespeare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.SOURCE.read_text(encoding="utf-8")
    first, second = mod.halves(text)
    assert first + "\n" + second == text and first.endswith("\n") and not second.startswith("\n")
    assert abs(len(first) - len(second)) < 0.01 * len(text)
    assert first[-200:] not in second and second[:200] not in first
