# MuAdam's lr for the held-out row config/meta_test/heldout/mlp_depth8.py: a grid at its narrowest width (128), one
# seed, the row's batch and steps; best_config.py / best.json give the lr that the row then uses at every width.
_base_ = ["../../meta_test/heldout/mlp_depth8.py"]

optimizer = dict(name="muadam")
task = ["mumlp-w128-d8_fashionmnist-28x28x1"]
num_runs = 1
sweep_objective_frac = 0.05
sweep_trials = None
sweep_config = dict(method="grid", parameters=dict(learning_rate=[1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001]))
