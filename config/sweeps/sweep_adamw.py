# SP AdamW, the paper's grid (Tab. 9): 14 learning rates from 1e-5 to 0.1 x beta1 {0.9, 0.95, 0.99} x beta2 {0.95,
# 0.99, 0.999} x weight decay {0.1, 1e-2, 1e-3, 1e-4} = 504 trials; SP MLP width 1024, depth 3, ImageNet 32x32.
# A TPE search over the same ranges: --cfg-options sweep_config.method=tpe and a budget (--sweep_trials 100) with
# ranges, see sweep_adamw_tpe.py.
_base_ = ["./sweeps_base.py"]

optimizer = "adamw"
task = ["mlp-w1024-d3_imagenet-32x32x3"]
local_batch_size = 4096
sweep_config = dict(
    method="grid",
    parameters=dict(
        learning_rate=[float(f"{10 ** (-5 + 4 * i / 13):.3g}") for i in range(14)],
        beta1=[0.9, 0.95, 0.99],
        beta2=[0.95, 0.99, 0.999],
        weight_decay=[0.1, 1e-2, 1e-3, 1e-4],
    ),
)
