# Outer schedule: AdamW, linear warmup over 100 steps from 3e-10 to 1e-2, then cosine to 3e-3 at step 4900
# (decay_steps includes the warmup, as optax), constant afterwards; 5000 outer steps.
# "clip": the reference chained clip_by_global_norm(1.0) *after* AdamW, which clipped the lr-scaled update and was a
# no-op; here the meta-gradient itself is clipped to global norm 1.0 before Adam (meta_grad_clip).
# Fix: the reference's file of this name set peak_value=3e-2 and end_value=1e-2, contradicting its name (max lr 1e-2,
# min lr 3e-3); here the peak and end are the ones the name promises.
_base_ = ["../meta_train_base.py"]

num_outer_steps = 5000
num_inner_steps = 1000
meta_grad_clip = 1.0
schedule = dict(init_value=3e-10, peak_value=1e-2, warmup_steps=100, decay_steps=4900, end_value=3e-3, exponent=1.0)
