# muLO_M (paper Tab. 5): meta-train on depth-3 muMLPs of widths 128, 512 and 1024 on ImageNet 32x32 at once (one PES
# estimator per width, the meta-gradient is their mean), batch 4096, 8 pairs each, truncation 50, step_mult 0.01.
# Metrics are logged per width (meta_loss/<task>). Preemptible: rerun the same command with --auto_resume true.
#   python src/main.py meta-train --config config/meta_train/mulo_m.py --auto_resume true
_base_ = ["./schedules/mxlr=3e-3_mnlr=1e-3_it=5000_clip.py"]

optimizer = "mup_small_fc_mlp"
task = ["mumlp-w128-d3_imagenet-32x32x3", "mumlp-w512-d3_imagenet-32x32x3", "mumlp-w1024-d3_imagenet-32x32x3"]
local_batch_size = 4096
num_tasks = 8
trunc_length = 50
# device memory of the data: one chunk is steps_per_jit x num_tasks x batch images = 5 x 8 x 4096 x 12 KiB = 2 GB;
# prefetch_batches chunks are kept ready per task (the ± branches share them)
steps_per_jit = 5
adafac_step_mult = 0.01
prefetch_batches = 2
name_suffix = "_mulo-m"
