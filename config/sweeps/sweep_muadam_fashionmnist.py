# CPU-sized MuAdam sweep for the Fashion-MNIST suite: learning rate only (multipliers 1, as when meta-training the
# muLO), width 64, depth 3, batch 128, 1000 steps: 8 trials. Tune at width 64, transfer to every width (muP).
_base_ = ["./sweeps_base.py"]

optimizer = dict(name="muadam")
task = ["mumlp-w64-d3_fashionmnist-28x28x1"]
local_batch_size = 128
max_eval_examples = 2000
sweep_config = dict(
    method="grid",
    parameters=dict(learning_rate=[1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003]),
)
