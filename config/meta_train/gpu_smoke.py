# GPU smoke recipe (issue 23): μLO_M's shape (muMLP depth 3, widths 128/512/1024 at once, 8 antithetic pairs,
# K = 50, batch 4096) on Fashion-MNIST, the real data that travels with the tree (IDX .gz files, 30 MB; ImageNet
# does not), sized for ~4 minutes of meta-training after compilation on one H100/H200, with a checkpoint every
# ~minute. `bash scripts/gpu_e2e.sh` runs it end to end (SIGTERM + resume, meta-test at widths 1024 and 8192, report).
#   python src/main.py meta-train --config config/meta_train/gpu_smoke.py --fashion_mnist_dir .data/fashion-mnist
#
# Length, from the FLOPs (an estimate until the first GPU run measures it; gpu_e2e.sh stops the run by wall time
# anyway):
# - parameters, 784 inputs, 3 hidden layers, 10 classes: w128 134,794; w512 932,362; w1024 2,913,290; 3.98 M in all;
# - one inner step of one particle: forward + backward ≈ 6 FLOPs per parameter per example = 6 × 3.98 M × 4096 =
#   9.8e10 FLOPs; an outer step runs 2 × 8 particles × K = 50 inner steps: 7.8e13 FLOPs of matmuls;
# - the LO's per-parameter MLP (39→32→32→2, ≈ 4,700 FLOPs per parameter per step): 1.5e13 FLOPs more;
# - float32 matmuls (jax_default_matmul_precision float32: no TF32) on an H200 peak at ~67 TFLOP/s; at ~40 TFLOP/s
#   achieved, 7.8e13 / 4e13 ≈ 2.0 s, plus ~0.4 s for the LO (Pallas: its 32×32 layer as a matmul; ~1 s fused XLA)
#   ≈ 2.4 s per outer step (issue 22's target for the same shape on ImageNet-32, 3,072 inputs: ≤ 4 s);
# - 100 outer steps ≈ 4 minutes; save_iter 25 ≈ one checkpoint a minute.
# lo.impl: pallas (the Pallas kernel, made for GPUs, lowered for CUDA in CI and compiled offline for sm_90; never run
# on a GPU yet). If it fails to compile or run there, use `--lo.impl fused` (the same function; gpu_e2e.sh falls
# back to fused by itself when the pallas run stops before its first step).
# The outer schedule is fixed by `schedule` (warmup 10, cosine over 100 steps), not by num_outer_steps, so a shorter
# run (--num_outer_steps N, as gpu_e2e.sh's uninterrupted reference) repeats the first N steps exactly.
_base_ = ["./mulo_m.py"]

task = ["mumlp-w128-d3_fashionmnist-28x28x1", "mumlp-w512-d3_fashionmnist-28x28x1", "mumlp-w1024-d3_fashionmnist-28x28x1"]
local_batch_size = 4096
lo = dict(impl="pallas")
estimator = dict(num_pairs=8, trunc_length=50)
steps_per_jit = 10
num_outer_steps = 100
schedule = dict(init_value=1e-4, peak_value=3e-3, warmup_steps=10, decay_steps=100, end_value=1e-3, exponent=1.0)
meta_grad_clip = 1.0
save_iter = 25
checkpoints_to_keep = 3
prefetch_batches = 2
name_suffix = "_gpu-smoke"
