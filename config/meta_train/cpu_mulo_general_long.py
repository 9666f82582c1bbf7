# Trial 2 of the general muLO (issue #27): config/meta_train/cpu_mulo_general.py with episodes log-uniform in
# 100-2000 steps (num_inner_steps 2000, was 1000) at the same cost per outer step (truncations of K = 20 steps), and
# 1000 outer steps (the first run's family meta-losses were flat after ~250-500 of its 2500). It tests whether longer
# episodes in meta-training remove the first run's blow-up at 5x its horizon (pretrained/cpu_mulo_general.md).
# Auto-resumable:
#   python src/main.py meta-train --config config/meta_train/cpu_mulo_general_long.py --auto_resume true
_base_ = ["./cpu_mulo_general.py"]

num_inner_steps = 2000
num_outer_steps = 1000
schedule = dict(init_value=1e-4, peak_value=3e-3, warmup_steps=100, decay_steps=1000, end_value=3e-4, exponent=1.0)
name_suffix = "_cpu-mulo-general-long"
