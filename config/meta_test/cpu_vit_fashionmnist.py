# CPU-sized ViT suite: muViT depth 3 on Fashion-MNIST with 7x7 patches (16 patches + the class token), widths
# 64..512 (1, 2, 4, 8 heads of 64), batch 64, 300 steps, 3 seeds (a MuAdam step at width 512 takes about 1.5 s on a
# 2-core CPU, so the suite runs in roughly half an hour per optimizer). Compare a muLO, MuAdam and an SP LO (SP LOs:
# --task vit-w64-d3-p7_fashionmnist-28x28x1,...), then `report` them.
_base_ = ["./meta_test_base.py"]

task = [f"muvit-w{w}-d3-p7_fashionmnist-28x28x1" for w in (64, 128, 256, 512)]
local_batch_size = 64
num_inner_steps = 300
num_runs = 3
test_interval = 100
max_eval_examples = 2000
eval_batch_size = 1000
