# Paper suite, horizon generalisation: width 1024, depth 3, 25,000 steps (25x the meta-training horizon).
_base_ = ["./meta_test_base.py"]

task = ["mumlp-w1024-d3_imagenet-32x32x3", "muvit-w1024-d3_imagenet-32x32x3", "mutransformer-w1024-d3_lm1b-s64-v32k"]
local_batch_size = 4096
num_inner_steps = 25000
test_interval = 500
test_steps_per_jit = 25
