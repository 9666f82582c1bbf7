# Held-out row: muViT depth 2 at width 128, 4x the meta-trained width 32 (4 heads of 32, 7x7 patches), Fashion-MNIST,
# batch 32 as in meta-training, 1000 steps, 3 seeds. See config/meta_test/heldout_suite.py.
_base_ = ["../heldout_suite.py"]

task = ["muvit-w128-d2-p7-h4_fashionmnist-28x28x1"]
local_batch_size = 32
