"""``python src/main.py meta-train``: build the learned optimizer, the estimator and the truncation schedule from
their config sections and the tasks from ``task``; check everything (outer schedule, run name, data, memory of a
step) before the run directory is created or anything is compiled; claim the run directory, then run the paper's
outer loop (``mulo.meta.train.train``) with a logger that mirrors its metrics to wandb."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

from mulo.app import preflight, startup
from mulo.app.memory import check_fits
from mulo.app.rundir import claim, run_dir_path, write_config
from mulo.app.runlog import RunLogger
from mulo.app.sections import build, init_theta
from mulo.meta import outer
from mulo.meta.mixture import task_batch_sizes
from mulo.meta.settings import TrainSettings
from mulo.meta.train import check_resume, train
from mulo.meta.trainer import MetaTrainer
from mulo.parallel import Placement, barrier, is_main_process
from mulo.tasks import TaskSettings, get_tasks


def run(cfg: Any, args: Any = None) -> int:
    """CLI handler of ``meta-train``. Everything is checked before the run directory is created or anything is
    compiled (tasks, LO, outer schedule, run name and output_dir, data, memory of a step); then, holding the run
    directory's lock (``mulo.app.rundir.claim``), whether existing checkpoints may be continued. config.py is written
    only for a run that starts or continues."""
    tasks = get_tasks(list(cfg.task), TaskSettings.from_config(cfg))
    lo = build(cfg, "lo")
    estimator = build(cfg, "estimator")
    truncation = build(cfg, "truncation", cfg.num_inner_steps)
    settings = TrainSettings.from_config(cfg)
    theta0 = init_theta(cfg, lo)  # a warm start: its θ file read and checked against the lo section
    outer.from_config(cfg)  # a bad outer schedule is one line before any data is read
    for b in task_batch_sizes(settings, len(tasks)):  # pairs and batch split over the devices
        Placement.create(data_parallel=settings.data_parallel).check(estimator.hparams.num_pairs, b)
    run_dir = run_dir_path(cfg, "meta-train")
    splits = ["train"] + (["meta_valid"] if cfg.meta_loss_split == "meta_valid" else [])
    preflight.check_data(tasks, splits)
    biggest = cfg.replace(local_batch_size=max(task_batch_sizes(settings, len(tasks))))  # a bound for every task
    check_fits(preflight.meta_train_footprint(biggest, tasks, lo, splits), "meta-train")
    main = is_main_process()  # the other processes of a multi-process run only compute and checkpoint there
    with claim(run_dir, "meta-train") if main else nullcontext():
        if main:
            check_resume(settings, MetaTrainer(settings, tasks, lo, estimator, truncation,
                                                   init_theta=theta0).identity(), run_dir)
            write_config(run_dir, cfg)
        barrier("mulo-run-dir")
        if main:
            startup.announce("meta-train", cfg, run_dir)
            print(startup.compiling_line("meta-train", f"{len(tasks)} task(s)"), flush=True)
        result = train(settings, tasks, lo, estimator, truncation, run_dir, make_logger=lambda: RunLogger(
            run_dir, cfg, group="meta-train", name=run_dir.name, job_type="meta-train"), init_theta=theta0)
    if not is_main_process():
        return 0
    if result["interrupted"]:
        print(f"meta-train: stopped by {result['interrupted']} after step {result['step']}; checkpoint saved in "
              f"{run_dir / 'checkpoints'}; continue with --auto_resume true", file=sys.stderr)
    else:
        print(f"meta-train: done, {result['step']} steps; theta: {result['theta_file']}", file=sys.stderr)
    return 0
