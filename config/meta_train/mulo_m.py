# muLO_M (paper Tab. 5): meta-train on depth-3 muMLPs of widths 128, 512 and 1024 on ImageNet 32x32 at once (one PES
# estimator per width, the meta-gradient is their mean), batch 4096, 8 pairs each, truncation 50, step_mult 0.01.
# Everything but the tasks is muLO_S's recipe. Metrics are logged per width (meta_loss/<task>).
# Preemptible: rerun the same command with --auto_resume true.
#   python src/main.py meta-train --config config/meta_train/mulo_m.py --auto_resume true
_base_ = ["./mulo_s.py"]

task = ["mumlp-w128-d3_imagenet-32x32x3", "mumlp-w512-d3_imagenet-32x32x3", "mumlp-w1024-d3_imagenet-32x32x3"]
name_suffix = "_mulo-m"
