# CPU μLO_M: the recipe of the shipped pretrained/cpu_mulo_m_fmnist θ. Meta-trains a μLO on depth-3 Fashion-MNIST
# muMLPs of widths 32, 64 and 128 at once (one PES estimator per width) in about an hour on a 2-core CPU.
# Auto-resumable: stop it at any time (Ctrl-C / SIGTERM save a checkpoint) and rerun the same command.
#   python src/main.py meta-train --config config/meta_train/cpu_mulo_m.py --auto_resume true
# What it changes from the 4-minute quickstart, and why (pretrained/cpu_mulo_m_fmnist.md has what was tried):
# - episodes of 100-1000 steps (log-uniform), so that the LO's time features cover a 1000-step meta-test;
# - many more outer steps, with a warmup + cosine schedule over all of them;
# - batch 128, the meta-test's batch size, so that the LO meets the gradient noise it will see there;
# - step_mult 0.03 instead of the paper's 0.01: tuned MuAdam wants lr 0.1 on these tasks, so with 0.01 the LO must
#   learn outputs ~10x larger before it can match it (60-step trials: 0.03 lowered the meta-loss sooner than 0.1).
# 1000 outer steps took 69 min on this 2-core CPU (shared with other jobs: 2.5-6 s a step), less on an idle one.
_base_ = ["./meta_train_base.py"]

lo = dict(name="mup_small_fc_mlp", step_mult=0.03)
estimator = dict(num_pairs=4, trunc_length=20)
truncation = dict(min_length=100, random_offset=50)
task = ["mumlp-w32-d3_fashionmnist-28x28x1", "mumlp-w64-d3_fashionmnist-28x28x1", "mumlp-w128-d3_fashionmnist-28x28x1"]
local_batch_size = 128
steps_per_jit = 10
num_inner_steps = 1000
num_outer_steps = 1000
meta_grad_clip = 1.0
schedule = dict(init_value=1e-4, peak_value=3e-3, warmup_steps=50, decay_steps=1000, end_value=3e-4, exponent=1.0)
save_iter = 25
checkpoints_to_keep = 3
prefetch_batches = 4
name_suffix = "_cpu-mulo-m"
