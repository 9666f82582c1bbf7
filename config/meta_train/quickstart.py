# Quickstart: a muLO_M-style meta-training (three widths at once) of muMLPs on Fashion-MNIST that runs on a laptop
# CPU in a few minutes and visibly lowers the meta-loss (compare the first and last steps of meta_loss in
# metrics.jsonl). Writes <output_dir>/<run name>/theta_final.* for meta-test.
# Episodes of 100-500 steps with K=20 truncations and a peak meta lr of 3e-3: the LO's time features then see the
# step counts of a 300-step meta-test (with 100-step episodes and lr 1e-2 the θ trained well to ~150 steps, then
# diverged).
#   python src/main.py meta-train --config config/meta_train/quickstart.py
_base_ = ["./meta_train_base.py"]

lo = dict(name="mup_small_fc_mlp", step_mult=0.01)
estimator = dict(num_pairs=4, trunc_length=20)
truncation = dict(min_length=100, random_offset=50)
task = ["mumlp-w32-d3_fashionmnist-28x28x1", "mumlp-w64-d3_fashionmnist-28x28x1", "mumlp-w128-d3_fashionmnist-28x28x1"]
local_batch_size = 64
steps_per_jit = 10
num_inner_steps = 500
num_outer_steps = 80
meta_grad_clip = 1.0
schedule = dict(init_value=1e-4, peak_value=3e-3, warmup_steps=10, decay_steps=80, end_value=3e-4, exponent=1.0)
save_iter = 20
checkpoints_to_keep = 3
prefetch_batches = 4
name_suffix = "_quickstart"
