# Held-out row: muMLP depth 8 on Fashion-MNIST at widths 128-2048 (the general muLO met depth-3 MLPs of widths 32 and
# 64 only), batch 128 as in meta-training, 1000 steps, 3 seeds. Width 2048 (~30M parameters) dominates the row's cost
# on a 2-core CPU (measured on the idle machine: ~24 min a seed for a muLO, ~3 min for MuAdam); drop it with --task
# for a quick run.
# See config/meta_test/heldout_suite.py.
_base_ = ["../heldout_suite.py"]

task = [f"mumlp-w{w}-d8_fashionmnist-28x28x1" for w in (128, 256, 512, 1024, 2048)]
local_batch_size = 128
