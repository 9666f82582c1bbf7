"""Multi-device / multi-process cases of tests/test_parallel.py, run in subprocesses (the device count and the
distributed runtime are fixed when JAX starts).

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/parallel_cases.py sharded-vs-single OUT
    python tests/parallel_cases.py meta-train OUT [--key value ...]     # one process of a (multi-process) run

Each case prints one JSON line starting with "RESULT " that the test reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(REPO))  # run as a script: the tests package (tests.meta.test_toys)

TINY = dict(task=["mumlp-w8-d1_fashionmnist-28x28x1"], num_tasks=4, trunc_length=4, steps_per_jit=2,
            num_inner_steps=12, truncation_schedule_min_length=6, random_initial_iteration_offset=4,
            local_batch_size=8, hidden_size=4, save_iter=2, checkpoints_to_keep=3, progress=False,
            meta_grad_clip=1.0, prefetch_batches=2,
            schedule=dict(init_value=1e-3, peak_value=1e-2, warmup_steps=1, decay_steps=6, end_value=1e-3))


def _leaves(tree):
    import jax
    import numpy as np

    return [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(tree)]


def _meta_losses(run_dir: Path) -> list[float]:
    from mulo.io import read_jsonl

    return [r["meta_loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def _train(cfg, run_dir, placement=None, stop_after=None):
    from mulo.optimizers import build_learned
    from mulo.tasks import TaskSettings, get_tasks
    from tests.meta.test_toys import train_flat

    tasks = get_tasks(list(cfg.task), TaskSettings.from_config(cfg))
    return train_flat(cfg, tasks, build_learned(cfg), run_dir, placement=placement, stop_after=stop_after,
                 handle_signals=False)


def sharded_vs_single(out: Path) -> dict:
    """The same meta-training on 1 device, on 4 (pairs split), on 2x2 (pairs and batch split), and the 4-device
    run interrupted and resumed: largest differences of the final states, meta-losses and checkpoints."""
    import jax
    import numpy as np

    from mulo.app.config import load_config
    from mulo.meta.checkpoint import Checkpointer
    from mulo.parallel import Placement

    from mulo.app import runtime

    assert jax.device_count() == 4, jax.devices()
    runtime.apply(load_config(None))  # the tests' compilation cache (MULO_COMPILATION_CACHE_DIR): reruns load
    cfg = load_config(None, cli={**TINY, "num_outer_steps": 4})
    runs = {
        "single": (Placement.create(devices=jax.devices()[:1]), None),
        "pairs4": (Placement.create(), None),
        "pairs2x2": (Placement.create(data_parallel=2), None),
    }
    states, losses, thetas = {}, {}, {}
    for name, (placement, _) in runs.items():
        result = _train(cfg, out / name, placement)
        states[name], losses[name] = _leaves(result["state"]), _meta_losses(out / name)
        thetas[name] = _leaves(result["state"].theta)
        shards = {len(x.sharding.device_set) for x in jax.tree.leaves(result["state"].estimators)}
        assert shards == {placement.num_devices}, (name, shards)
    # interrupted after 2 steps and resumed, sharded
    part = _train(cfg, out / "resumed", Placement.create(), stop_after=2)
    assert part["interrupted"] == "stop_after"
    rest = _train(cfg.replace(auto_resume=True), out / "resumed", Placement.create())
    states["resumed"], losses["resumed"] = _leaves(rest["state"]), _meta_losses(out / "resumed")

    # the checkpoints on disk, restored into one device's layout
    single = Placement.create(devices=jax.devices()[:1])
    from mulo.app.sections import meta_trainer
    from mulo.optimizers import build_learned
    from mulo.tasks import TaskSettings, get_tasks

    tasks = get_tasks(list(cfg.task), TaskSettings.from_config(cfg))
    trainer = meta_trainer(cfg, tasks, build_learned(cfg), single)
    template = trainer.init_state()
    ckpts = {}
    for name in ("single", "pairs4", "pairs2x2"):
        c = Checkpointer(out / name / "checkpoints", 3, trainer.identity())
        ckpts[name] = _leaves(c.restore(template)[1])
        c.close()

    def maxdiff(a, b):
        return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
                   for x, y in zip(a, b))

    theta0 = _leaves(trainer.lo.init_theta(__import__("mulo.meta.trainer", fromlist=["_key"])._key(cfg.seed, 0)))

    def reldiff(a, b):
        """||a - b|| relative to how far θ moved from its initial value."""
        num = np.sqrt(sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(a, b)))
        den = np.sqrt(sum(float(np.sum((x.astype(np.float64) - z) ** 2)) for x, z in zip(a, theta0)))
        return num / den

    from mulo.io import read_jsonl

    grad_norms = {n: [r["meta_grad_norm"] for r in read_jsonl(out / n / "metrics.jsonl")] for n in runs}

    return {
        "state": {n: maxdiff(states["single"], states[n]) for n in ("pairs4", "pairs2x2")},
        "theta_rel": {n: reldiff(thetas["single"], thetas[n]) for n in ("pairs4", "pairs2x2")},
        "grad_norm_rel": {n: max(abs(a - b) / abs(a) for a, b in zip(grad_norms["single"], grad_norms[n]))
                          for n in ("pairs4", "pairs2x2")},
        "state_exact": {n: all(np.array_equal(x, y) for x, y in zip(states["single"], states[n]))
                        for n in ("pairs4", "pairs2x2")},
        "resume_exact": all(np.array_equal(x, y) for x, y in zip(states["pairs4"], states["resumed"])),
        "meta_loss": {n: float(np.max(np.abs(np.subtract(losses["single"], losses[n]))))
                      for n in ("pairs4", "pairs2x2")},
        "checkpoint": {n: maxdiff(ckpts["single"], ckpts[n]) for n in ("pairs4", "pairs2x2")},
        "checkpoint_vs_state": maxdiff(ckpts["single"], states["single"]),
        "resumed_meta_loss_exact": losses["resumed"] == losses["pairs4"],
        "steps": len(losses["single"]),
    }


def first_chunks(trainer, n: int) -> list:
    """The first ``n`` device chunks of ``trainer``'s first task (its prefetchers closed afterwards)."""
    streams = trainer.streams(0)
    try:
        return [next(streams[0]) for _ in range(n)]
    finally:
        for it in streams:
            it.close()


def resident_streams(out: Path) -> dict:
    """Meta-training's data chunks on a 2x2 mesh with the images resident on the devices (data_on_device on) and
    gathered on the host (off): equal bit for bit, with the same sharding."""
    import jax
    import numpy as np

    from mulo.app.config import load_config
    from mulo.app.sections import meta_trainer
    from mulo.optimizers import build_learned
    from mulo.parallel import Placement
    from mulo.tasks import TaskSettings, get_tasks

    chunks, shardings, resident = {}, {}, {}
    for mode in ("on", "off"):
        cfg = load_config(None, cli={**TINY, "data_on_device": mode})
        tasks = get_tasks(list(cfg.task), TaskSettings.from_config(cfg))
        trainer = meta_trainer(cfg, tasks, build_learned(cfg), Placement.create(data_parallel=2))
        resident[mode] = list(trainer.resident)
        got = first_chunks(trainer, 3)
        chunks[mode] = [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(got)]
        shardings[mode] = [str(x.sharding) for x in jax.tree.leaves(got)]
    return {"devices": jax.device_count(), "resident": resident,
            "equal": all(np.array_equal(a, b) for a, b in zip(chunks["on"], chunks["off"])),
            "dtypes": sorted({str(x.dtype) for x in chunks["on"]}),
            "same_sharding": shardings["on"] == shardings["off"], "shardings": sorted(set(shardings["on"]))}


def meta_train_process(argv: list[str]) -> dict:
    """One process of ``meta-train`` through the CLI's own entry (jax.distributed from the config/environment)."""
    import jax

    from mulo.app import cli

    code = cli.main(argv)
    theta = None
    if jax.process_index() == 0:
        from mulo.optimizers import load_theta

        files = sorted(Path(a).glob("*/theta_final.msgpack") for a in [argv[argv.index("--output_dir") + 1]])
        found = [p for group in files for p in group]
        if found:
            _, th, _ = load_theta(found[0])
            theta = [x.tolist() for x in _leaves(th)]
    return {"code": code, "process": jax.process_index(), "processes": jax.process_count(),
            "devices": jax.device_count(), "theta": theta}


if __name__ == "__main__":
    case, out = sys.argv[1], Path(sys.argv[2])
    if case == "sharded-vs-single":
        result = sharded_vs_single(out)
    elif case == "resident-streams":
        result = resident_streams(out)
    elif case == "meta-train":
        result = meta_train_process(sys.argv[3:])
    else:
        raise SystemExit(f"unknown case {case}")
    print("RESULT " + json.dumps(result), flush=True)
