# MuAdam's lr for the held-out row config/meta_test/heldout/horizon5x.py: a grid at width 128 (muP transfers it to
# the row's width 1024), 5000 steps, one seed.
_base_ = ["../../meta_test/heldout/horizon5x.py"]

optimizer = dict(name="muadam")
task = ["mumlp-w128-d3_fashionmnist-28x28x1"]
num_runs = 1
sweep_objective_frac = 0.05
sweep_trials = None
sweep_config = dict(method="grid", parameters=dict(learning_rate=[1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]))
