# Paper suite, depth generalisation ("5x" deeper than meta-training): width 1024, depth 16, batch 128, 5000 steps.
_base_ = ["./meta_test_base.py"]

task = ["mumlp-w1024-d16_imagenet-32x32x3", "muvit-w1024-d16_imagenet-32x32x3", "mutransformer-w1024-d16_lm1b-s64-v32k"]
local_batch_size = 128
num_inner_steps = 5000
