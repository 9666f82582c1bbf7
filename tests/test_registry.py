"""The registries (mulo.registry): a learned optimizer, a hand-designed optimizer, a meta-gradient estimator and a task
family defined and registered *here*, in a test file, work through their config sections, the config, run names, θ
files, task names, meta-training and the meta-test command without any other module changing; duplicates are
refused; the shipped components are found by discovery."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mulo.app.cli import main as cli_main
from mulo.app.config import load_config
from mulo.errors import CheckpointError, ConfigError, TaskError
from mulo.optimizers import build_learned, load_theta, save_theta
from mulo.optimizers.base import Optimizer
from mulo.optimizers.hand_designed import from_optax
from mulo.hparams import POSITIVE, hparam
from mulo.registry import (Component, LearnedSpec, RegistryError, TaskFamily, component, is_learned, learned_names,
                           model_family, optimizer_names, register_estimator, register_hand_designed,
                           register_learned, register_task_family, section_keys, task_models)
from mulo.app.rundir import run_name, theta_label
from mulo.tasks import get_task, parse_task_name
from mulo.tasks.common import HaikuTask, classification_loss

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------- a toy LO
# step = lr · exp(θ["log_mult"]) · g, times the task's μP update scale for the μP twin


@dataclass(frozen=True)
class ToyHParams:
    lr: float = hparam(0.1, "toy LO: base step size", min=POSITIVE)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ToyLO:
    name: str
    hparams: ToyHParams = field(default_factory=ToyHParams)
    impl: str = "fused"

    @property
    def uses_mup(self) -> bool:
        return self.name == "mup_toy_sgd_lo"

    def init_theta(self, key):
        del key
        return {"log_mult": jnp.zeros((), jnp.float32)}

    def opt_fn(self, theta, update_scales=None) -> Optimizer:
        scales = update_scales if self.uses_mup else None

        def init(params, num_steps=0):
            return params

        def update(params, grads, loss=None, key=None):
            step = self.hparams.lr * jnp.exp(theta["log_mult"])
            sc = scales if scales is not None else jax.tree.map(lambda _: 1.0, params)
            return jax.tree.map(lambda p, g, s: p - step * s * g.astype(p.dtype), params, grads, sc)

        return Optimizer(init=init, update=update, params=lambda state: state)


def _toy_spec(name: str, is_mup: bool) -> LearnedSpec:
    return LearnedSpec(name=name, is_mup=is_mup, hparams=ToyHParams, config_keys={"learning_rate": "lr"},
                       label_key=None, implementations=("fused", "reference"),
                       build=lambda hp, impl: ToyLO(name, hp if isinstance(hp, ToyHParams) else ToyHParams(**hp),
                                                    impl))


TOY_SPEC = register_learned(_toy_spec("mup_toy_sgd_lo", True))
register_learned(_toy_spec("toy_sgd_lo", False))

# ------------------------------------------------------------------------- a toy hand-designed optimizer
# sign descent: p <- p - lr · sign(g)


@dataclass(frozen=True)
class ToySignHParams:
    learning_rate: float = hparam(0.01, "toy sign descent: step size", min=POSITIVE)


def _toy_sign(hp: ToySignHParams, task, num_steps: int) -> Optimizer:
    del task, num_steps
    return from_optax(optax.chain(optax.scale_by_sign(), optax.scale(-hp.learning_rate)))


register_hand_designed(Component(name="toy_sign", hparams=ToySignHParams, build=_toy_sign, help="sign descent"))

# --------------------------------------------------------------------------------------------- a toy estimator
# truncated ES whose estimate is multiplied by `gain` (a hyper-parameter of its own beside σ, K and N)


@dataclass(frozen=True)
class ToyESHParams:
    std: float = hparam(0.01, "perturbation std", min=POSITIVE)
    trunc_length: int = hparam(50, "truncation length", min=1)
    num_pairs: int = hparam(8, "antithetic pairs per task", min=1)
    gain: float = hparam(3.0, "factor on the ES estimate")


@dataclass(frozen=True)
class ToyES:
    hparams: ToyESHParams = ToyESHParams()
    name: str = "toy_es"

    def _es(self):
        from mulo.meta.es import ES
        from mulo.meta.estimators import EstimatorHParams

        hp = self.hparams
        return ES(EstimatorHParams(hp.std, hp.trunc_length, hp.num_pairs))

    def state(self, inner, carry):
        return self._es().state(inner, carry)

    def init_carry(self, theta):
        return None

    def carry_of(self, state):
        return None

    def state_sharding(self, placement):
        return self._es().state_sharding(placement)

    def pair_gradients(self, eps, carry, inner, out):
        grads, state = self._es().pair_gradients(eps, carry, inner, out)
        return jax.tree.map(lambda g: self.hparams.gain * g, grads), state


register_estimator(Component(name="toy_es", hparams=ToyESHParams, build=ToyES, help="ES times a gain"))

# ------------------------------------------------------------------------------------------ a toy task family
# {mutoylin|toylin}-w{W}-d{D}_{image dataset}: D hidden linear layers of W units (no nonlinearity), then a readout


class ToyLinearTask(HaikuTask):
    def __init__(self, spec, settings, dataset):
        num_classes = int(dataset.num_classes)

        def forward(x, is_training):  # -> (logits, activations by layer), as HaikuTask expects
            h, acts = x.reshape((x.shape[0], -1)).astype(jnp.float32), {}
            for i in range(spec.depth):
                h = acts[f"linear_{i}"] = hk.Linear(spec.width, name=f"linear_{i}")(h)
            logits = acts["readout"] = hk.Linear(num_classes, name="readout")(h)
            return logits, acts

        def role(module, name, shape):
            if name != "w":
                return "vector"
            return "input" if module.endswith("linear_0") else "output" if module.endswith("readout") else "hidden"

        super().__init__(spec, settings, dataset, forward, role_fn=role, loss_fn=classification_loss,
                         normalizer_max=1.5 * math.log(num_classes))


def _even_width(spec, d_head):
    if spec.width % 2:
        raise TaskError(f"bad width {spec.width} in task name {spec.name!r}: a toy linear net's width is even")


TOY_FAMILY = register_task_family(TaskFamily(name="toylinear", models={"mutoylin": True, "toylin": False},
                                             dataset_kind="image", build=ToyLinearTask, check=_even_width,
                                             plural="toy linear nets"))

TOY_TASK = "mutoylin-w8-d2_fashionmnist-28x28x1"


# --------------------------------------------------------------------------------------------------- the tests


def test_the_shipped_optimizers_and_families_are_discovered():
    assert {"small_fc_mlp", "mup_small_fc_mlp"} <= set(learned_names())
    assert {"mumlp", "mlp", "mutransformer", "transformer", "muvit", "vit"} <= set(task_models())
    assert model_family("mumlp").models == {"mumlp": True, "mlp": False}


def test_registry_is_append_only():
    with pytest.raises(RegistryError, match="'mup_toy_sgd_lo' is already registered"):
        register_learned(_toy_spec("mup_toy_sgd_lo", True))
    with pytest.raises(RegistryError, match="already registered"):
        register_learned(_toy_spec("mup_small_fc_mlp", True))  # a shipped name, too
    assert register_learned(TOY_SPEC) is TOY_SPEC  # the very same entry again (a re-import) is no duplicate
    with pytest.raises(RegistryError, match="model 'mumlp' of family 'other' is already registered by family 'mlp'"):
        register_task_family(TaskFamily(name="other", models={"mumlp": True}, dataset_kind="image",
                                        build=ToyLinearTask))
    with pytest.raises(RegistryError, match="bad learned optimizer name"):
        register_learned(_toy_spec("bad name", False))


def test_toy_lo_through_the_config_and_build_learned():
    assert is_learned("mup_toy_sgd_lo") and "mup_toy_sgd_lo" in optimizer_names()
    cfg = load_config(None, cli={"optimizer": "mup_toy_sgd_lo", "learning_rate": 0.5})
    lo = build_learned(cfg)
    assert isinstance(lo, ToyLO) and lo.hparams == ToyHParams(lr=0.5) and lo.impl == cfg.lo_impl
    with pytest.raises(ConfigError, match="expected one of .*mup_toy_sgd_lo.*did you mean 'mup_toy_sgd_lo'"):
        load_config(None, cli={"optimizer": "mup_toy_sgd_l"})


def test_toy_lo_step_by_hand_and_its_mup_flag():
    params = {"w": jnp.array([[1.0, 2.0]]), "b": jnp.array([3.0])}
    grads = {"w": jnp.array([[0.5, -1.0]]), "b": jnp.array([2.0])}
    scales = {"w": 0.25, "b": 1.0}
    theta = {"log_mult": jnp.log(jnp.float32(2.0))}  # step = 0.1 * 2
    mu = ToyLO("mup_toy_sgd_lo").opt_fn(theta, scales)
    out = mu.params(mu.update(mu.init(params), grads))
    np.testing.assert_allclose(out["w"], [[1.0 - 0.2 * 0.25 * 0.5, 2.0 + 0.2 * 0.25]], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [3.0 - 0.2 * 2.0], rtol=1e-6)
    sp = ToyLO("toy_sgd_lo").opt_fn(theta, scales)  # the SP twin ignores the scales
    np.testing.assert_allclose(sp.params(sp.update(sp.init(params), grads))["w"], [[0.9, 2.2]], rtol=1e-6)


def test_toy_lo_theta_file_round_trip_and_run_name(tmp_path):
    lo = ToyLO("mup_toy_sgd_lo", ToyHParams(lr=0.25))
    path = tmp_path / "theta_final.msgpack"
    save_theta(path, lo, {"log_mult": jnp.float32(0.5)}, extra={"step": 3})
    back, theta, extra = load_theta(path, impl="reference")
    assert back == ToyLO("mup_toy_sgd_lo", ToyHParams(lr=0.25), impl="reference")
    assert float(theta["log_mult"]) == 0.5 and extra == {"step": 3}
    cfg = load_config(None, cli={"optimizer": "mup_toy_sgd_lo", "task": [TOY_TASK]})
    name = run_name(cfg, "meta-test", theta_label(path))
    assert name == f"meta-test_mup_toy_sgd_lo_{theta_label(path)}_{TOY_TASK}"  # no label key, no lr: a learned LO
    save_theta(tmp_path / "bad.msgpack", lo, {"log_mult": jnp.zeros((2,))})  # θ of another shape than init_theta's
    with pytest.raises(CheckpointError, match="do not match mup_toy_sgd_lo with hyper-parameters"):
        load_theta(tmp_path / "bad.msgpack")


def test_toy_task_family_through_the_task_names():
    spec = parse_task_name(TOY_TASK)
    assert (spec.family, spec.is_mup, spec.width, spec.depth) == ("toylinear", True, 8, 2)
    assert parse_task_name("toylin-w8-d2_cifar10-32x32x3").is_mup is False
    with pytest.raises(TaskError, match="toy linear nets take an image dataset"):
        parse_task_name("mutoylin-w8-d2_tinyshakespeare-s8-vbyte")
    with pytest.raises(TaskError, match="a toy linear net's width is even"):
        parse_task_name("mutoylin-w7-d2_fashionmnist-28x28x1")
    with pytest.raises(TaskError, match="expected one of .*mutoylin, toylin"):
        parse_task_name("toylinx-w8-d2_fashionmnist-28x28x1")
    task = get_task(TOY_TASK)
    assert isinstance(task, ToyLinearTask)
    # μP update scales from the roles the family declared: hidden matrices 1/fan_in, everything else 1
    scales = task.update_scales
    assert scales["linear_1"]["w"] == pytest.approx(1.0 / 8) and scales["linear_1"]["b"] == 1.0
    assert scales["linear_0"]["w"] == 1.0 and scales["readout"]["w"] == 1.0
    assert get_task("toylin-w8-d2_fashionmnist-28x28x1").update_scales["linear_1"]["w"] == 1.0  # SP: 1 everywhere


def test_meta_test_runs_the_toy_lo_on_the_toy_task(tmp_path, capsys):
    lo = ToyLO("mup_toy_sgd_lo", ToyHParams(lr=0.05))
    theta_path = tmp_path / "theta_final.msgpack"
    save_theta(theta_path, lo, {"log_mult": jnp.float32(0.0)})
    out = tmp_path / "out"
    args = ["meta-test", "--config", str(REPO / "config" / "meta_test" / "meta_test_base.py"), "--optimizer",
            "mup_toy_sgd_lo", "--checkpoint", str(theta_path), "--task", TOY_TASK,
            "--learning_rate", "0.9", "--num_inner_steps", "6", "--local_batch_size", "16", "--test_interval", "3",
            "--test_steps_per_jit", "3", "--max_eval_examples", "32", "--eval_batch_size", "32", "--progress",
            "false", "--wandb_mode", "disabled", "--num_runs", "1", "--output_dir", str(out)]
    assert cli_main(args) == 0
    assert "ignoring --learning_rate 0.9" in capsys.readouterr().out  # the θ file's lr wins
    (run_dir,) = out.iterdir()
    assert run_dir.name == f"meta-test_mup_toy_sgd_lo_{theta_label(theta_path)}_{TOY_TASK}"
    manifest = json.loads((run_dir / "meta_test.json").read_text())
    assert manifest["optimizer"] == "mup_toy_sgd_lo" and manifest["optimizer_info"]["hparams"] == {"lr": 0.05}
    summary = json.loads((run_dir / TOY_TASK / "seed0" / "summary.json").read_text())
    assert summary["steps_completed"] == 6 and not summary["diverged"] and math.isfinite(summary["final_train_loss"])
    assert load_config(run_dir / "config.py").section("lo")["lr"] == 0.05  # the θ file's, in the lo section


def test_toy_lo_through_its_lo_section():
    """The toy LO's section keys are its hyper-parameter dataclass's (help and bounds from hparam()), and the object
    built from the section steps as defined."""
    keys = section_keys("lo", "mup_toy_sgd_lo")
    assert list(keys) == ["name", "impl", "lr"] and keys["impl"].choices == ("fused", "reference")
    assert keys["lr"].help == "toy LO: base step size" and keys["lr"].min == POSITIVE
    spec = component("lo", "mup_toy_sgd_lo")
    assert spec.defaults() == {"lr": 0.1}
    lo = spec.build(spec.hparams_of({"lr": 0.3}), "reference")
    assert lo == ToyLO("mup_toy_sgd_lo", ToyHParams(lr=0.3), impl="reference")
    opt = lo.opt_fn(lo.init_theta(None), {"w": 0.5})
    out = opt.params(opt.update(opt.init({"w": jnp.array([1.0])}), {"w": jnp.array([2.0])}))
    np.testing.assert_allclose(out["w"], [1.0 - 0.3 * 0.5 * 2.0], rtol=1e-6)


def test_toy_hand_designed_optimizer_through_its_section_the_config_and_meta_test(tmp_path):
    from mulo.app.config import option_key
    from mulo.app.sections import build

    assert "toy_sign" in optimizer_names() and "toy_sign" in option_key("optimizer.name").choices
    assert list(section_keys("optimizer", "toy_sign")) == ["name", "learning_rate"]
    spec = component("optimizer", "toy_sign")
    params, grads = {"w": jnp.array([1.0, -1.0, 0.0])}, {"w": jnp.array([3.0, -0.1, 2.0])}
    opt = spec.build(spec.hparams_of({"learning_rate": 0.5}), None, 10)
    np.testing.assert_allclose(opt.params(opt.update(opt.init(params, 10), grads))["w"], [0.5, -0.5, -0.5])
    # today's flat keys (the config's learning_rate) reach it too, and the meta-test command runs it
    opt = build(load_config(None, cli={"optimizer": "toy_sign", "learning_rate": 0.25}), "optimizer", None, 10)
    np.testing.assert_allclose(opt.params(opt.update(opt.init(params, 10), grads))["w"], [0.75, -0.75, -0.25])
    out = tmp_path / "out"
    args = ["meta-test", "--config", str(REPO / "config" / "meta_test" / "meta_test_base.py"), "--optimizer",
            "toy_sign", "--task", TOY_TASK, "--learning_rate", "0.02", "--num_inner_steps", "4",
            "--local_batch_size", "8", "--skip_test", "true", "--test_steps_per_jit", "2", "--progress", "false",
            "--wandb_mode", "disabled", "--num_runs", "1", "--output_dir", str(out)]
    assert cli_main(args) == 0
    (run_dir,) = out.iterdir()
    manifest = json.loads((run_dir / "meta_test.json").read_text())
    assert manifest["optimizer"] == "toy_sign" and manifest["optimizer_info"]["hparams"]["learning_rate"] == 0.02
    summary = json.loads((run_dir / TOY_TASK / "seed0" / "summary.json").read_text())
    assert summary["steps_completed"] == 4 and math.isfinite(summary["final_train_loss"])


def test_toy_estimator_through_its_section_and_meta_training():
    """The toy estimator takes the flat config's gradient_estimator and its own section keys; meta-training runs with
    it, and its estimate is exactly `gain` times truncated ES's from the same keys and data."""
    from mulo.meta.es import ES
    from mulo.meta.estimators import EstimatorHParams
    from mulo.meta.trainer import MetaTrainer
    from mulo.app.sections import meta_trainer
    from tests.meta.test_toys import TOY_META_CONFIG, QuadraticTask
    from tests.meta.test_toys import ToyLO as QuadLO

    assert list(section_keys("estimator", "toy_es")) == ["name", "std", "trunc_length", "num_pairs", "gain"]
    spec = component("estimator", "toy_es")
    assert spec.build(spec.hparams_of({"gain": 2.0, "num_pairs": 2})).hparams == ToyESHParams(num_pairs=2, gain=2.0)
    cfg = load_config(None, cli={**TOY_META_CONFIG, "num_tasks": 2, "gradient_estimator": "toy_es"})
    tasks = [QuadraticTask(dim=2, noise=0.5, init_noise=0.3)]
    toy = meta_trainer(cfg, tasks, QuadLO())
    assert isinstance(toy.estimator, ToyES) and toy.estimator.hparams.gain == 3.0 and toy.num_pairs == 2
    es = MetaTrainer(toy.settings, tasks, QuadLO(), ES(EstimatorHParams(cfg.pes_std, cfg.trunc_length, 2)),
                     toy.truncation)
    grads = []
    for trainer in (toy, es):
        state, streams = trainer.init_state(), trainer.streams(0)
        try:
            grads.append(trainer.estimators[0].estimate(state.theta, state.estimators[0], jax.random.PRNGKey(3),
                                                        streams[0])[0])
            new, metrics = trainer.step(state, streams)
        finally:
            for it in streams:
                it.close()
        assert int(new.step) == 1 and math.isfinite(metrics["meta_grad_norm"])
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[1]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 3.0 * b, rtol=1e-5, atol=1e-8), *grads)


def test_importing_the_config_imports_no_optimizer_module():
    code = ("import sys; import mulo.app.config, mulo.registry; "
            "print(sorted(m for m in sys.modules if m.startswith(('jax', 'mulo.optimizers', 'mulo.tasks'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------- choice lists exist once

def _choice_keys() -> dict[str, object]:
    """Every run-level config key (dict entries as key.entry) that has a list of accepted values -> that list."""
    from mulo.app.config import SCHEMA

    out = {}
    for key, spec in SCHEMA.items():
        if spec.choices is not None:
            out[key] = spec.choices
        for entry, sub in (spec.fields or {}).items():
            if sub.choices is not None:
                out[f"{key}.{entry}"] = sub.choices
    return out


def test_every_choice_list_of_the_config_is_the_one_its_implementation_reads():
    """Each config key's accepted values are derived, not written again: the schema holds the very tuple (``is``)
    that the implementing module checks and dispatches on, and that tuple lives in mulo.registry; a section's
    choices are its components' (names from the registry, lo.impl from each LO's implementations)."""
    import importlib

    from mulo import registry
    from mulo.app import sections
    from mulo.app.config import SCHEMA

    owners = {  # config key -> (the module that implements the choice, its name for the list, registry's name)
        "meta_loss_split": ("mulo.meta.unroll", "META_LOSS_SPLITS", "META_LOSS_SPLITS"),
        "meta_loss_norm": ("mulo.meta.mixture", "META_LOSS_NORMS", "META_LOSS_NORMS"),
        "distributed": ("mulo.parallel", "DISTRIBUTED_MODES", "DISTRIBUTED_MODES"),
        "data_on_device": ("mulo.data.transfer", "ON_DEVICE_MODES", "ON_DEVICE_MODES"),
        "wandb_mode": ("mulo.app.runtime", "WANDB_MODES", "WANDB_MODES"),
        "jax_default_matmul_precision": ("mulo.app.runtime", "MATMUL_PRECISIONS", "MATMUL_PRECISIONS"),
        "sweep_config.method": ("mulo.app.sweep_space", "METHODS", "SWEEP_METHODS"),
    }
    choices = _choice_keys()
    assert set(choices) == set(owners), "a new choice key needs its owner listed here"
    for key, (module, name, reg_name) in owners.items():
        owned = getattr(importlib.import_module(module), name)
        assert choices[key] is getattr(registry, reg_name), key
        assert owned is choices[key], key
    for section in sections.NAMED:  # name: the registry's names (optimizer: the hand-designed ones and "lo")
        names = registry.names(section) + (("lo",) if section == "optimizer" else ())
        assert tuple(sections.all_keys(section)["name"][0].choices) == names, section
    assert {"small_fc_mlp", "mup_small_fc_mlp", "velo", "mup_velo"} <= set(sections.component_names("lo"))
    for name in registry.learned_names():  # lo.impl: the LO's own list; lo.eps_scaling: the one tuple
        keys = sections.keys("lo", name)
        assert tuple(keys["impl"].choices) == registry.component("lo", name).implementations
        assert set(keys["impl"].choices) <= set(registry.LO_IMPLS)
        if "eps_scaling" in keys:
            assert keys["eps_scaling"].choices is registry.EPS_SCALINGS
    # schedule: its entries are SCHEDULE_KEYS, the list mulo.meta.outer checks a schedule against
    from mulo.meta import outer

    assert tuple(SCHEMA["schedule"].fields) == registry.SCHEDULE_KEYS and outer.SCHEDULE_KEYS is registry.SCHEDULE_KEYS


def test_every_lo_impl_is_taken_by_an_lo_and_velo_takes_a_subset():
    from mulo.optimizers import velo
    from mulo.optimizers.adafac_mlp import AdafacMLPLO
    from mulo.registry import LO_IMPLS

    assert all(AdafacMLPLO("mup_small_fc_mlp", impl=impl).impl == impl for impl in LO_IMPLS)
    assert set(velo.IMPLEMENTATIONS) < set(LO_IMPLS)
    with pytest.raises(ConfigError, match="lo_impl"):
        AdafacMLPLO("mup_small_fc_mlp", impl="fast")


def test_the_implementations_refuse_values_outside_their_list():
    """The lists are what the implementations check (not only the config): a value outside them is one line."""
    from mulo.meta.mixture import divides_by_init_loss
    from mulo.parallel import distributed_kwargs
    from mulo.app.runtime import check_environment, set_matmul_precision

    assert divides_by_init_loss("init_loss") and not divides_by_init_loss("none")
    with pytest.raises(ConfigError, match="meta_loss_norm.*none, init_loss"):
        divides_by_init_loss("init")
    cfg = {"distributed": "maybe", "coordinator_address": None, "num_processes": None, "process_id": None}
    with pytest.raises(ConfigError, match="'distributed': expected one of auto, on, off"):
        distributed_kwargs(type("C", (dict,), {"__getattr__": dict.__getitem__})(cfg), env={})
    with pytest.raises(ConfigError, match="float32, tensorfloat32, bfloat16"):
        set_matmul_precision("highest")
    with pytest.raises(ConfigError, match="WANDB_MODE: expected one of online, offline, disabled"):
        check_environment({"WANDB_MODE": "loud"})
    check_environment({"WANDB_MODE": "dryrun"})  # wandb's older name is still accepted from the environment
