# Sweep defaults: one seed per trial, 1000 steps; objective = mean train loss over the last 5% of the steps.
# Storage: SQLite in the run directory unless --storage URL (any SQLAlchemy URL, e.g. postgresql://...) is given;
# workers started with the same --storage and --study_name share one study.
_base_ = ["../meta_test/meta_test_base.py"]

num_runs = 1
num_inner_steps = 1000
test_interval = 50
sweep_objective_frac = 0.05
sweep_trials = None  # grid: the whole grid; tpe/random: set a budget
