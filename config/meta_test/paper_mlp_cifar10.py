# Paper suite: muMLP depth 3 on CIFAR-10, widths 128..8192, batch 4096, 5000 steps, 5 seeds.
_base_ = ["./meta_test_base.py"]

task = [f"mumlp-w{w}-d3_cifar10-32x32x3" for w in (128, 256, 512, 1024, 2048, 4096, 8192)]
local_batch_size = 4096
num_inner_steps = 5000
