# muVeLO_M (paper App. C): meta-train mup_velo (the reference's muVeLO sizes: LSTM 16, 8 per-parameter MLPs of 2 x 4
# hidden units, interp_mult 1, step_mult = exp_mult = 0.001, no RMS(p) step factor) on depth-3 muMLPs of widths 128,
# 512 and 1024 on ImageNet 32x32 at once: 45,000 outer steps, PES truncation 20, 8 antithetic pairs, sigma 0.01,
# outer Adam lr 1e-3 (the paper's lambda_1). The paper reports about 250 A6000 GPU-hours.
# Preemptible: rerun the same command with --auto_resume true.
#   python src/main.py meta-train --config config/meta_train/mu_velo_m.py --auto_resume true
_base_ = ["./meta_train_base.py"]

lo = dict(name="mup_velo", lstm_hidden_size=16, param_inits=8, ff_hidden_size=4, ff_hidden_layers=2, step_mult=0.001,
          exp_mult=0.001)
estimator = dict(num_pairs=8, std=0.01, trunc_length=20)
task = ["mumlp-w128-d3_imagenet-32x32x3", "mumlp-w512-d3_imagenet-32x32x3", "mumlp-w1024-d3_imagenet-32x32x3"]
local_batch_size = 4096
steps_per_jit = 5
num_outer_steps = 45000
meta_learning_rate = 1e-3
prefetch_batches = 2
name_suffix = "_mu-velo-m"
