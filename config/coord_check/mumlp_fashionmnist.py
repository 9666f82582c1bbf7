# muP coordinate check of a 3-hidden-layer muMLP on Fashion-MNIST under MuAdam:
#   python src/main.py coord-check --config config/coord_check/mumlp_fashionmnist.py
# Mean |activation| per layer over the first `coord_steps` steps on one fixed batch, at each of `widths`
# (the width in `task` is replaced). Flat curves = correct muP. Try `--task mlp-w128-d3_fashionmnist-28x28x1
# --optimizer.name adam` to see standard parametrization blow up with width.
_base_ = ["../base.py"]

optimizer = dict(name="muadam", learning_rate=1e-2)
task = ["mumlp-w128-d3_fashionmnist-28x28x1"]
widths = [64, 128, 256, 512, 1024, 2048, 4096]
coord_steps = 4
local_batch_size = 64
seed = 0
