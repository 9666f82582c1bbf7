"""``python src/main.py meta-train``: check everything (tasks, learned optimizer, outer schedule, run name, data,
memory of a step) before the run directory is created or anything is compiled, claim the run directory, then run
the paper's outer loop (``mulo.meta.train.train``) with a logger that mirrors its metrics to wandb."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

from mulo.app import preflight, startup
from mulo.app.memory import check_fits
from mulo.app.rundir import claim, run_dir_path, write_config
from mulo.app.runlog import RunLogger
from mulo.errors import CheckpointError
from mulo.meta import outer
from mulo.meta.checkpoint import Checkpointer
from mulo.meta.mixture import task_batch_sizes
from mulo.meta.train import MetaTrainer, train
from mulo.optimizers import build_learned
from mulo.parallel import Placement, barrier, is_main_process
from mulo.tasks import TaskSettings, get_tasks


def _check_resume(cfg, tasks: Sequence[Any], lo: Any, run_dir: Path) -> None:
    """Existing checkpoints in ``run_dir`` are continued only with --auto_resume and a matching identity: checked
    before config.py is written (train() checks it too, but a refused rerun must not rewrite the run's config)."""
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        return
    ckpt = Checkpointer(ckpt_dir, cfg.checkpoints_to_keep, MetaTrainer(cfg, tasks, lo).identity())
    try:
        latest = ckpt.latest_step()
        if latest is None:
            return
        if not cfg.auto_resume:
            raise CheckpointError(f"{run_dir} already has meta-training checkpoints (latest step {latest}): pass "
                                  f"--auto_resume true to continue that run, or set another name_suffix or output_dir")
        ckpt.check_identity()
    finally:
        ckpt.close()


def run(cfg: Any, args: Any = None) -> int:
    """CLI handler of ``meta-train``. Everything is checked before the run directory is created or anything is
    compiled (tasks, LO, outer schedule, run name and output_dir, data, memory of a step); then, holding the run
    directory's lock (``mulo.app.rundir.claim``), whether existing checkpoints may be continued. config.py is written
    only for a run that starts or continues."""
    tasks = get_tasks(list(cfg.task), TaskSettings.from_config(cfg))
    lo = build_learned(cfg)
    outer.from_config(cfg)  # a bad outer schedule is one line before any data is read
    for b in task_batch_sizes(cfg, len(tasks)):  # pairs and batch split over the devices
        Placement.from_config(cfg).check(cfg.num_tasks, b)
    run_dir = run_dir_path(cfg, "meta-train")
    splits = ["train"] + (["meta_valid"] if cfg.meta_loss_split == "meta_valid" else [])
    preflight.check_data(tasks, splits)
    biggest = cfg.replace(local_batch_size=max(task_batch_sizes(cfg, len(tasks))))  # a bound for every task
    check_fits(preflight.meta_train_footprint(biggest, tasks, lo, splits), "meta-train")
    main = is_main_process()  # the other processes of a multi-process run only compute and checkpoint there
    with claim(run_dir, "meta-train") if main else nullcontext():
        if main:
            _check_resume(cfg, tasks, lo, run_dir)
            write_config(run_dir, cfg)
        barrier("mulo-run-dir")
        if main:
            startup.announce("meta-train", cfg, run_dir)
            print(startup.compiling_line("meta-train", f"{len(tasks)} task(s)"), flush=True)
        logger = (RunLogger(run_dir, cfg, group="meta-train", name=run_dir.name, job_type="meta-train") if main
                  else None)
        try:
            result = train(cfg, tasks, lo, run_dir, logger=logger)
        finally:
            if logger is not None:
                logger.close()
    if not is_main_process():
        return 0
    if result["interrupted"]:
        print(f"meta-train: stopped by {result['interrupted']} after step {result['step']}; checkpoint saved in "
              f"{run_dir / 'checkpoints'}; continue with --auto_resume true", file=sys.stderr)
    else:
        print(f"meta-train: done, {result['step']} steps; theta: {result['theta_file']}", file=sys.stderr)
    return 0
