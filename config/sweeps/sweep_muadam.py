# The reference's MuAdam grid (reference_design.md §3): 4 learning rates x 5^3 muP multipliers = 500 trials of a
# width-1024 depth-3 muMLP on ImageNet 32x32, batch 4096, 1000 steps. CPU-sized: sweep_muadam_fashionmnist.py.
_base_ = ["./sweeps_base.py"]

optimizer = dict(name="muadam")
task = ["mumlp-w1024-d3_imagenet-32x32x3"]
local_batch_size = 4096
sweep_config = dict(
    method="grid",
    parameters=dict(
        learning_rate=[0.1, 0.01, 0.001, 0.0001],
        mup_input_mult=[16.0, 4.0, 1.0, 1 / 4, 1 / 16],
        mup_output_mult=[16.0, 4.0, 1.0, 1 / 4, 1 / 16],
        mup_hidden_lr_mult=[16.0, 4.0, 1.0, 1 / 4, 1 / 16],
    ),
)
