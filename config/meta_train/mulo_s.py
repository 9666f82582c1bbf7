# muLO_S (paper Tab. 5): meta-train on one width-128, depth-3 muMLP on ImageNet 32x32, batch 4096, 8 antithetic pairs,
# truncation 50, step_mult 0.01; outer schedule 3e-3 -> 1e-3 over 5000 steps (8 h on an A6000 in the paper).
#   python src/main.py meta-train --config config/meta_train/mulo_s.py
_base_ = ["./schedules/mxlr=3e-3_mnlr=1e-3_it=5000_clip.py"]

lo = dict(name="mup_small_fc_mlp", step_mult=0.01)
estimator = dict(num_pairs=8, trunc_length=50)
task = ["mumlp-w128-d3_imagenet-32x32x3"]
local_batch_size = 4096
# device memory of the data: one chunk is steps_per_jit x estimator.num_pairs x batch images = 5 x 8 x 4096 x 12 KiB = 2 GB;
# prefetch_batches chunks are kept ready per task (the ± branches share them)
steps_per_jit = 5
prefetch_batches = 2
name_suffix = "_mulo-s"
