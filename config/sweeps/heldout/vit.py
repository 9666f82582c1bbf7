# MuAdam's lr for the held-out row config/meta_test/heldout/vit.py: a grid at its (only) width 128, one seed.
_base_ = ["../../meta_test/heldout/vit.py"]

optimizer = dict(name="muadam")
task = ["muvit-w128-d2-p7-h4_fashionmnist-28x28x1"]
num_runs = 1
sweep_objective_frac = 0.05
sweep_trials = None
sweep_config = dict(method="grid", parameters=dict(learning_rate=[0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003]))
