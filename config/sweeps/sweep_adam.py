# SP Adam on the SP MLP (width 1024, depth 3, ImageNet 32x32, batch 4096, 1000 steps): 14 learning rates from 1e-5 to
# 0.1 x beta1 {0.9, 0.95, 0.99} x beta2 {0.95, 0.99, 0.999} = 126 trials (the paper's AdamW grid without decay).
_base_ = ["./sweeps_base.py"]

optimizer = dict(name="adam")
task = ["mlp-w1024-d3_imagenet-32x32x3"]
local_batch_size = 4096
sweep_config = dict(
    method="grid",
    parameters=dict(
        learning_rate=[float(f"{10 ** (-5 + 4 * i / 13):.3g}") for i in range(14)],
        beta1=[0.9, 0.95, 0.99],
        beta2=[0.95, 0.99, 0.999],
    ),
)
