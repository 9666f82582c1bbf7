# CPU general muLO, trial 1: one muLO meta-trained from a random theta on a mixture of task families at small widths,
# for tasks it never saw (shipped as pretrained:cpu_mulo_general until trial 3, cpu_mulo_general_warm.py, replaced it)
# (the held-out suite config/meta_test/heldout_suite.py). Auto-resumable: stop it at any time (Ctrl-C / SIGTERM save a
# checkpoint) and rerun the same command; first write the Tiny Shakespeare halves (the held-out suite trains its
# transformers on the second half, which meta-training never reads):
#   python scripts/split_tinyshakespeare.py
#   python src/main.py meta-train --config config/meta_train/cpu_mulo_general.py --auto_resume true
# Families (one PES estimator per task, 4 antithetic pairs each, K = 20, episodes log-uniform in 100-1000 steps):
# - muMLP depth 3 on Fashion-MNIST, widths 32 and 64, batch 128 (as the shipped cpu_mulo_m_fmnist);
# - muTransformer depth 1, width 32 (one head of d_head 32), byte-level Tiny Shakespeare (first half), sequence 32,
#   batch 16: width 64 / depth 2 / sequence 64 / batch 32 cost ~10x more per step on a CPU;
# - muViT depth 2, width 32 (one head), 7x7 patches, Fashion-MNIST, batch 32.
# meta_loss_norm = init_loss divides each task's meta-loss by its value at initialisation (~ln 10 for the image
# classifiers, ~ln 259 for the byte LM), so the transformer's larger loss does not dominate the meta-gradient;
# `report` on the run directory plots meta_loss_family/<family> (mlp, transformer, vit) on that common scale.
# step_mult 0.03, batch 128 for the MLPs, clip 1 and the shape of the outer schedule (warmup to 3e-3, cosine to
# 3e-4) are cpu_mulo_m's (see pretrained/cpu_mulo_m_fmnist.md).
# Cost (trial of 5 outer steps on the shared 2-core machine): ~3.5 CPU-seconds per outer step for the 4 tasks
# (single-task trials: the transformer and the ViT cost several times the MLPs), plus ~150 CPU-seconds of compilation per start (JAX's persistent
# cache, compilation_cache_dir, saves most of it on a resume). 2500 outer steps: ~2.4 CPU-hours, i.e. 1.2-2.4 hours
# on an idle 2-core machine; within the ~3 CPU-hour budget with room for the compiles of a few resumes.
_base_ = ["./meta_train_base.py"]

lo = dict(name="mup_small_fc_mlp", step_mult=0.03)
estimator = dict(num_pairs=4, trunc_length=20)
truncation = dict(min_length=100, random_offset=50)
task_options = dict(d_head=32)
task = ["mumlp-w32-d3_fashionmnist-28x28x1", "mumlp-w64-d3_fashionmnist-28x28x1",
        "mutransformer-w32-d1_tinyshakespeare-s32-vbyte", "muvit-w32-d2-p7-h1_fashionmnist-28x28x1"]
task_batch_sizes = [128, 128, 16, 32]
tinyshakespeare_path = "data/tinyshakespeare_halves/first_half.txt"
meta_loss_norm = "init_loss"
local_batch_size = 128
steps_per_jit = 10
num_inner_steps = 1000
num_outer_steps = 2500
meta_grad_clip = 1.0
schedule = dict(init_value=1e-4, peak_value=3e-3, warmup_steps=100, decay_steps=2500, end_value=3e-4, exponent=1.0)
save_iter = 25
checkpoints_to_keep = 3
prefetch_batches = 4
name_suffix = "_cpu-mulo-general"
