# MuAdam's lr for the held-out row config/meta_test/heldout/transformer.py: a grid at its narrowest width (128), one
# seed, the row's batch, steps and text (the second half of Tiny Shakespeare).
_base_ = ["../../meta_test/heldout/transformer.py"]

optimizer = dict(name="muadam")
task = ["mutransformer-w128-d1_tinyshakespeare-s32-vbyte"]
num_runs = 1
sweep_objective_frac = 0.05
sweep_trials = None
sweep_config = dict(method="grid", parameters=dict(learning_rate=[0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003]))
