# CPU quickstart for muVeLO: mup_velo with the reference's muVeLO sizes, meta-trained on depth-3
# Fashion-MNIST muMLPs of widths 32, 64 and 128 (one PES estimator per width), the quickstart's settings (and outer
# schedule) otherwise. 80 outer steps: about 15 min on a 2-core CPU with the plain path (the first, compiling, ~80 s;
# then ~11 s each); the default fused path (lo.impl fused) is faster per step (BENCHMARKS.md: 6x at width 1024).
#   python src/main.py meta-train --config config/meta_train/cpu_mu_velo.py
_base_ = ["./quickstart.py"]

lo = dict(name="mup_velo", step_mult=0.001)
estimator = dict(trunc_length=20)
steps_per_jit = 10
name_suffix = "_cpu-mu-velo"
