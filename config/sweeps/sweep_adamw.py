# SP AdamW, the paper's grid (Tab. 9): sweep_adam.py's 14 learning rates from 1e-5 to 0.1 x beta1 {0.9, 0.95, 0.99} x
# beta2 {0.95, 0.99, 0.999}, times weight decay {0.1, 1e-2, 1e-3, 1e-4} = 504 trials; SP MLP width 1024, depth 3,
# ImageNet 32x32. (MMEngine merges this sweep_config dict into sweep_adam.py's, adding weight_decay to its grid.)
# A TPE search over the same ranges: --cfg-options sweep_config.method=tpe and a budget (--sweep_trials 100) with
# ranges, see sweep_adamw_tpe.py.
_base_ = ["./sweep_adam.py"]

optimizer = dict(name="adamw")
sweep_config = dict(parameters=dict(weight_decay=[0.1, 1e-2, 1e-3, 1e-4]))
