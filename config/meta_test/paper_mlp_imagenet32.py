# Paper suite (Therien et al., Tab. 10): muMLP depth 3 on ImageNet 32x32, widths 128..8192, batch 4096, 5000 steps,
# 5 seeds. For the SP learned optimizer (small_fc_mlp) pass the SP tasks: --task mlp-w128-d3_imagenet-32x32x3,...
_base_ = ["./meta_test_base.py"]

task = [f"mumlp-w{w}-d3_imagenet-32x32x3" for w in (128, 256, 512, 1024, 2048, 4096, 8192)]
local_batch_size = 4096
num_inner_steps = 5000
max_eval_examples = 50000
eval_batch_size = 6250
