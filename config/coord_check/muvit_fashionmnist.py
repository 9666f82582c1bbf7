# muP coordinate check of a depth-2 muViT (7x7 patches) on Fashion-MNIST under MuAdam:
#   python src/main.py coord-check --config config/coord_check/muvit_fashionmnist.py
# Flat curves = correct muP (heads: width / 64, 8 at width 1024 by the paper's table). Try
# `--task vit-w128-d2-p7_fashionmnist-28x28x1 --optimizer.name adam` to see the SP ViT's activations grow with width.
_base_ = ["../base.py"]

optimizer = dict(name="muadam", learning_rate=1e-2)
task = ["muvit-w128-d2-p7_fashionmnist-28x28x1"]
widths = [64, 128, 256, 512, 1024]
coord_steps = 4
local_batch_size = 32
seed = 0
