# Meta-training defaults (reference config/meta_train/meta_train_base.py): PES with 8 antithetic pairs per task,
# truncations of 50 steps, episodes log-uniform in [100, 1000] steps, checkpoints every 50 outer steps (10 kept).
# Run: python src/main.py meta-train --config config/meta_train/<recipe>.py [--key value ...]
_base_ = ["../base.py"]

lo = dict(name="mup_small_fc_mlp")
estimator = dict(name="pes", std=0.01, trunc_length=50, num_pairs=8)  # num_pairs: antithetic pairs per task
truncation = dict(name="log_uniform", min_length=100, random_offset=50)
num_outer_steps = 5000
num_inner_steps = 1000
steps_per_jit = 10
meta_loss_split = "train"
schedule = dict()
save_iter = 50
checkpoints_to_keep = 10
