# Held-out row: 5x the meta-training horizon (5000 steps; episodes were at most 1000) on a wide muMLP (depth 3,
# width 1024: 16x the widest meta-training MLP), batch 128, 3 seeds. See config/meta_test/heldout_suite.py.
_base_ = ["../heldout_suite.py"]

task = ["mumlp-w1024-d3_fashionmnist-28x28x1"]
local_batch_size = 128
num_inner_steps = 5000
test_interval = 500
