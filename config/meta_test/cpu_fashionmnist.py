# CPU-sized suite: muMLP depth 3 on Fashion-MNIST, widths 64..2048, batch 128, 1000 steps, 3 seeds.
# Compare a muLO, MuAdam and an SP LO (SP LOs: --task mlp-w64-d3_fashionmnist-28x28x1,...), then `report` them.
_base_ = ["./meta_test_base.py"]

task = [f"mumlp-w{w}-d3_fashionmnist-28x28x1" for w in (64, 128, 256, 512, 1024, 2048)]
local_batch_size = 128
num_inner_steps = 1000
num_runs = 3
test_interval = 100
max_eval_examples = 2000
eval_batch_size = 1000
