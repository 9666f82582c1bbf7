# Held-out row: muMLP depth 8 on Fashion-MNIST at widths 128-1024 (the general muLO met depth-3 MLPs of widths 32 and
# 64 only; width 2048 is left out on a 2-core CPU: ~30M parameters, ~2 s an LO step, ~1 h a seed per LO), batch
# 128 as in meta-training, 1000 steps, 3 seeds. See config/meta_test/heldout_suite.py.
_base_ = ["../heldout_suite.py"]

task = [f"mumlp-w{w}-d8_fashionmnist-28x28x1" for w in (128, 256, 512, 1024)]
local_batch_size = 128
