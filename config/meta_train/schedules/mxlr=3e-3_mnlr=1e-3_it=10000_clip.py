# Outer schedule: AdamW, linear warmup over 100 steps from 3e-10 to 3e-3, then cosine to 1e-3 at step 9900
# (decay_steps includes the warmup, as optax), constant afterwards; 10000 outer steps.
# "clip": the reference chained clip_by_global_norm(1.0) *after* AdamW, which clipped the lr-scaled update and was a
# no-op; here the meta-gradient itself is clipped to global norm 1.0 before Adam (meta_grad_clip).
_base_ = ["../meta_train_base.py"]

num_outer_steps = 10000
num_inner_steps = 1000
meta_grad_clip = 1.0
schedule = dict(init_value=3e-10, peak_value=3e-3, warmup_steps=100, decay_steps=9900, end_value=1e-3, exponent=1.0)
