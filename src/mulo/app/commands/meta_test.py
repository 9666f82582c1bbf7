"""Meta-test: train fresh tasks with a learned (from a checkpoint) or hand-designed optimizer.

    python src/main.py meta-test --config config/meta_test/...py --optimizer mup_small_fc_mlp \
        --checkpoint checkpoints/<meta-train run> --task mumlp-w128-d3_...,mumlp-w1024-d3_... --num_runs 5

Where the results go (``report`` reads them)::

    <output_dir>/<run_name>/
        config.py                      resolved config
        meta_test.json                 optimizer (label, checkpoint, LO hyper-parameters) and one entry per run
        <task>/seed<k>/metrics.jsonl   one line per step: step, train_loss, step_time (+ test_loss, test_accuracy
                                       every test_interval steps and at the last step)
        <task>/seed<k>/summary.json    the run's outcome: finished/diverged, final and tail-mean train loss, ...

Run ``r`` of ``num_runs`` uses seed ``cfg.seed + r`` for both the initialisation and the data order, so seeds differ
across runs and repeat across invocations (and across tasks, which makes widths paired comparisons).

The learned optimizer comes from ``--checkpoint`` (a meta-train run directory, its ``checkpoints/latest``, or a theta
file: see ``resolve_checkpoint``) or ``--wandb_checkpoint_id entity/project/run_id`` (the run's theta file is
downloaded to ``<output_dir>/wandb_checkpoints/<entity>_<project>_<run_id>/``; all wandb access goes through
``wandb_api``). Its hyper-parameters come from the checkpoint (``load_theta``), never from the command line; the run
directory's name and config.py record them.

A run whose loss becomes NaN/inf stops, is recorded as diverged, and the other runs go on. A finished run with the
same settings is not repeated when the command is run again (its summary is reused); an unfinished or different one
is moved aside (``seed<k>.old-<time>``), never appended to or deleted.

``--use_bf16 true``: the forward/backward pass runs in bf16 (params and float inputs cast down inside the loss), the
params and optimizer state stay float32, integer labels and token ids are never cast.

The command is three modules: where the optimizer comes from (``mulo.evaluate.lo_source``: run directory, θ file,
wandb, hub), the training loop (``mulo.evaluate.train_loop.TrainLoop``, ``test_steps_per_jit`` steps per jitted
``lax.scan`` call; sweeps reuse it) and this one, which runs every (task, seed) and writes the run directory laid out
as ``mulo.layout`` says.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax

from mulo.app.config import Config
from mulo.errors import MuloError
from mulo.app.sections import optimizer_source, with_checkpoint_hparams
from mulo.evaluate.lo_source import OptimizerSource, _jsonable, lo_keys, wandb_api
from mulo.evaluate.train_loop import LoopSettings, TrainLoop, run_summary
from mulo.io import atomic_write_json, read_jsonl
from mulo.layout import MANIFEST, METRICS, SUMMARY, seed_dir

# ---------------------------------------------------------------------------------------------------------------------
# the meta-test command


def run_seeds(cfg: Config) -> list[int]:
    return [cfg.seed + r for r in range(cfg.num_runs)]


def _settings_id(cfg: Config, source: OptimizerSource, task_name: str, seed: int) -> dict:
    """What must match for a finished run to be reused instead of repeated."""
    return {"task": task_name, "seed": seed, "optimizer": source.name, "num_steps": cfg.num_inner_steps,
            "batch_size": cfg.local_batch_size, "use_bf16": cfg.use_bf16, "optimizer_info": source.info,
            "mup": [cfg.mup_input_mult, cfg.mup_output_mult, cfg.mup_hidden_lr_mult]}


def _reusable(path: Path, ident: dict) -> dict | None:
    summary = path / SUMMARY
    if not summary.is_file():
        return None
    import json

    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("settings") == _jsonable(ident) else None


def _move_aside(path: Path) -> None:
    """An unfinished or different earlier run in ``path`` is kept, renamed, rather than deleted or appended to. Only
    called by the process that holds the run directory's lock, so the run moved aside has no live writer."""
    if path.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = path.with_name(f"{path.name}.old-{stamp}")
        k = 1
        while target.exists():
            target = path.with_name(f"{path.name}.old-{stamp}-{k}")
            k += 1
        shutil.move(str(path), str(target))


def meta_test_runs(cfg: Config, tasks: Sequence[Any], source: OptimizerSource, run_dir: str | os.PathLike,
                   group: str | None = None, devices: Sequence[Any] | None = None) -> list[dict]:
    """Train every task for every seed; write metrics, summaries and the manifest; return the summaries (in task,
    seed order).

    The (task, seed) runs are independent, so with several local devices (``devices``, default
    ``mulo.parallel.local_device_pool()``) each device takes the next unfinished run: one worker thread per device
    under ``jax.default_device``, each with its own compiled loop per task. A run computes exactly what it computes
    alone on one device; only the order in which runs finish changes."""
    import threading

    from mulo.parallel import barrier, is_main_process, local_device_pool

    run_dir = Path(run_dir)
    settings = LoopSettings.from_config(cfg)
    group = group or run_dir.name
    manifest = {"optimizer": source.name, "optimizer_info": source.info, "tasks": [t.name for t in tasks],
                "seeds": run_seeds(cfg), "num_steps": cfg.num_inner_steps, "runs": []}
    jobs = [(task, seed) for task in tasks for seed in run_seeds(cfg)]
    done: dict[int, tuple[dict, dict]] = {}  # job index -> (summary, manifest entry)
    lock = threading.Lock()

    def entry(task, seed, diverged):
        return {"task": task.name, "seed": seed, "dir": str(seed_dir(run_dir, task.name, seed).relative_to(run_dir)),
                "diverged": diverged}

    def write_manifest():
        manifest["runs"] = [done[i][1] for i in sorted(done)]
        atomic_write_json(run_dir / MANIFEST, _jsonable(manifest))

    pending = []
    for i, (task, seed) in enumerate(jobs):
        old = _reusable(seed_dir(run_dir, task.name, seed), _settings_id(cfg, source, task.name, seed))
        if old is None:
            pending.append(i)
            continue
        print(f"[meta-test] {task.name} seed {seed}: already finished in {seed_dir(run_dir, task.name, seed)}, "
              f"reusing it")
        done[i] = (old, entry(task, seed, old["diverged"]))

    loops: dict[tuple, TrainLoop] = {}

    def run_job(i: int, device: Any) -> None:
        from mulo.app.runlog import RunLogger
        from mulo.app.startup import compiling_line

        task, seed = jobs[i]
        out = seed_dir(run_dir, task.name, seed)
        ident = _settings_id(cfg, source, task.name, seed)
        _move_aside(out)
        key = (task.name, getattr(device, "id", None))
        with lock:
            first = key not in loops
            if first:
                loops[key] = TrainLoop(task, source.make(task), settings)
        if first:
            where = f" on {device}" if device is not None else ""
            print(compiling_line("meta-test", task.name + where), flush=True)
        logger = RunLogger(out, cfg, group=group, name=f"{task.name}-seed{seed}",
                           job_type="meta-test", extra_config={"task_name": task.name, "run_seed": seed,
                                                               "optimizer_info": source.info})
        try:
            result = loops[key].run(seed, logger.log, desc=f"{task.name} seed {seed}")
        finally:
            logger.close()
        summary = {**run_summary(result, cfg.sweep_objective_frac), "optimizer": source.name,
                   "settings": _jsonable(ident)}
        atomic_write_json(out / SUMMARY, _jsonable(summary))
        state = "DIVERGED at step %d" % result.diverged_step if result.diverged else \
            f"final train loss {summary['final_train_loss']:.4f}"
        print(f"[meta-test] {task.name} seed {seed}: {state} ({result.wall_time:.1f}s)")
        with lock:
            done[i] = (summary, entry(task, seed, result.diverged))
            if is_main_process():
                write_manifest()

    procs, me = jax.process_count(), jax.process_index()
    mine = pending[me::procs]  # several processes: each takes every procs-th unfinished run
    devices = list(local_device_pool() if devices is None else devices)
    if len(devices) <= 1 or len(mine) <= 1:
        for i in mine:
            run_job(i, None)
    else:
        _run_on_devices(mine, devices, run_job)
    if procs > 1:
        barrier("mulo-meta-test-runs")
        if me != 0:
            return [done[i][0] for i in sorted(done)]
        for i in set(pending) - set(mine):  # the other processes' runs, from their summaries
            task, seed = jobs[i]
            summary = _reusable(seed_dir(run_dir, task.name, seed), _settings_id(cfg, source, task.name, seed))
            if summary is None:
                raise MuloError(f"meta-test: {task.name} seed {seed} left no summary in "
                                f"{seed_dir(run_dir, task.name, seed)}")
            done[i] = (summary, entry(task, seed, summary["diverged"]))
    write_manifest()
    return [done[i][0] for i in sorted(done)]


def _run_on_devices(jobs: Sequence[int], devices: Sequence[Any], run_job: Callable[[int, Any], None]) -> None:
    """Run ``run_job(job, device)`` for every job, each device's worker taking the next job (``on_each_device``)."""
    import queue

    from mulo.parallel import on_each_device

    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)

    def work(device, failed):
        while not failed():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            run_job(job, device)

    on_each_device(list(devices)[:len(jobs)], work)


def build_tasks(cfg: Config, names: Sequence[str] | None = None) -> list[Any]:
    """The tasks of ``cfg.task`` (validated names; tasks on one dataset share it, so its data is loaded once)."""
    from mulo.tasks import TaskSettings, get_tasks

    return get_tasks(list(names if names is not None else cfg.task), TaskSettings.from_config(cfg))


def main(cfg: Config, args: Any = None, api_factory: Callable[[], Any] | None = None) -> int:
    """``meta-test`` command handler (``api_factory``: the wandb API, default ``wandb_api``).

    Everything is checked before the run directory is created: task names, the optimizer and its checkpoint, the
    run name and output_dir, the data, the memory a training step needs. The run directory is then locked for the
    whole run (``mulo.app.rundir.claim``), so a second meta-test aimed at it stops instead of interleaving."""
    from contextlib import nullcontext

    from mulo.app import preflight, startup
    from mulo.parallel import barrier, is_main_process
    from mulo.app.rundir import claim, run_dir_path, run_name, theta_label, write_config

    tasks = build_tasks(cfg)  # validate the task names before creating anything
    download = None
    if cfg.wandb_checkpoint_id:  # <output_dir>/wandb_checkpoints/<entity>_<project>_<run_id>/<theta file>
        download = Path(cfg.output_dir) / "wandb_checkpoints" / cfg.wandb_checkpoint_id.strip("/").replace("/", "_")
    source = optimizer_source(cfg, download, api_factory or wandb_api)
    if source.info.get("checkpoint"):
        fixed = with_checkpoint_hparams(cfg, source)
        asked, used = cfg.section("lo"), fixed.section("lo")
        for flat, hp in lo_keys(source.name).items():  # say so when the command line asked for what θ overrides
            given = [f for f in (flat, f"lo.{hp}") if args is not None and hasattr(args, f"key__{f}")]
            if given and asked[hp] != used[hp]:
                print(f"[meta-test] ignoring --{given[0]} {asked[hp]}: the checkpoint's learned optimizer has "
                      f"{hp}={used[hp]}")
        cfg = fixed
    theta = theta_label(source.info["checkpoint"]) if source.learned is not None else None  # in the run name
    run_dir = run_dir_path(cfg, "meta-test", theta)
    preflight.check_data(tasks, ["train"] + ([] if cfg.skip_test else ["test"]))
    preflight.check_loops(cfg, tasks, source.make, "meta-test")
    main_process = is_main_process()  # in a multi-process run, process 0 owns the run directory
    with claim(run_dir, "meta-test") if main_process else nullcontext():
        if main_process:
            write_config(run_dir, cfg)
            startup.announce("meta-test", cfg, run_dir, runs_under="<task>/seed<k>")
            print(f"[meta-test] {source.name} on {len(tasks)} task(s) x {cfg.num_runs} seed(s), "
                  f"{cfg.num_inner_steps} steps -> {run_dir}")
            if source.info.get("checkpoint"):
                print(f"[meta-test] learned optimizer from {source.info['checkpoint']} with hyper-parameters "
                      f"{source.info.get('hparams')}")
        barrier("mulo-meta-test-run-dir")
        summaries = meta_test_runs(cfg, tasks, source, run_dir, group=run_name(cfg, "meta-test", theta))
    if not main_process:
        return 0
    n_div = sum(bool(s["diverged"]) for s in summaries)
    print(f"[meta-test] done: {len(summaries)} runs ({n_div} diverged); results in {run_dir}; "
          f"figures: python src/main.py report {run_dir}")
    return 0


def read_run(seed_path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """(summary, metrics records) of one meta-test run directory ``<task>/seed<k>``."""
    import json

    seed_path = Path(seed_path)
    summary = json.loads((seed_path / SUMMARY).read_text(encoding="utf-8"))
    metrics = read_jsonl(seed_path / METRICS) if (seed_path / METRICS).is_file() else []
    return summary, metrics
