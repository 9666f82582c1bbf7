# Paper suite: muMLP depth 3 on ImageNet 64x64, widths 128..4096, batch 4096, 5000 steps, 5 seeds.
_base_ = ["./meta_test_base.py"]

task = [f"mumlp-w{w}-d3_imagenet-64x64x3" for w in (128, 256, 512, 1024, 2048, 4096)]
local_batch_size = 4096
num_inner_steps = 5000
max_eval_examples = 50000
eval_batch_size = 6250
