"""``python src/main.py coord-check``: the μP coordinate check of one task over ``widths``
(``mulo.evaluate.coord_check``), its records, figures and table written into a claimed run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mulo.app import preflight
from mulo.app.rundir import claim, run_dir_path, write_config
from mulo.app.sections import optimizer_source
from mulo.errors import ConfigError
from mulo.evaluate.coord_check import coord_data, l1_table, plot
from mulo.io import atomic_write_json
from mulo.tasks import TaskSettings, get_tasks, with_width


def run(cfg: Any, args: Any = None) -> int:
    """CLI handler of ``coord-check``."""
    if len(cfg.task) != 1:
        raise ConfigError(f"coord-check takes one task name (its width is replaced by each of `widths`), got "
                          f"{len(cfg.task)}: {','.join(cfg.task)}")
    settings = TaskSettings.from_config(cfg)
    widths = sorted(set(cfg.widths))
    names = [with_width(cfg.task[0], w, d_head=settings.d_head) for w in widths]
    tasks = get_tasks(names, settings)
    source = optimizer_source(cfg)  # hand-designed from the config; learned from --checkpoint/--wandb_checkpoint_id
    run_dir = run_dir_path(cfg, "coord-check")
    preflight.check_data(tasks[:1], ["train"])
    preflight.check_loops(cfg, tasks, source.make, "coord-check", batch_size=cfg.local_batch_size,
                          steps_per_jit=1)
    with claim(run_dir, "coord-check"):
        write_config(run_dir, cfg)
        return _run(cfg, tasks, widths, source, run_dir)


def _run(cfg: Any, tasks: Any, widths: list[int], source: Any, run_dir: Path) -> int:
    """Record, plot and print the coordinate check into ``run_dir``."""
    records = coord_data(tasks, source.make, steps=cfg.coord_steps,
                         batch_size=cfg.local_batch_size, seed=cfg.seed)
    lr = None if source.learned else source.info["hparams"].get("learning_rate")
    result = {"task": cfg.task[0], "optimizer": source.name, "optimizer_info": source.info, "learning_rate": lr,
              "widths": widths, "coord_steps": cfg.coord_steps, "batch_size": cfg.local_batch_size,
              "seed": cfg.seed, "records": records}
    atomic_write_json(run_dir / "coord_check.json", result)
    title = f"{cfg.task[0]} / {source.name}" + ("" if lr is None else f" lr={lr:g}")
    plot(records, run_dir / "coord_check.png", title)
    plot(records, run_dir / "coord_check_delta.png", title + " (std of x_t - x_1)", key="delta_std")
    table = l1_table(records)
    print(f"coord check of {cfg.task[0]} ({source.name}): mean |x| per layer at t={cfg.coord_steps}")
    for layer, by_t in table.items():
        row = by_t[cfg.coord_steps]
        print(f"  {layer:>12s}: " + "  ".join(f"w{w}={row[w]:.3g}" for w in widths))
    print(f"wrote {run_dir / 'coord_check.json'} and {run_dir / 'coord_check.png'}")
    return 0
