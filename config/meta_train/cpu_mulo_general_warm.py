# CPU general muLO, trial 3: the mixture of cpu_mulo_general.py (same four tasks, estimator, truncations, per-task
# meta-loss normalisation), warm-started from the shipped Fashion-MNIST muLO (init_theta), with a smaller outer lr
# and 400 outer steps. Why: that muLO already beats tuned MuAdam on the held-out depth-8 MLPs and transformers but
# loses on the ViT, while the mixture trained from a random theta lost the MLP skill (pretrained/cpu_mulo_general.md);
# starting from it asks the mixture to add the ViT/transformer behaviour without relearning the MLPs'.
# Auto-resumable (a resume continues its checkpoint, never re-reads init_theta's file):
#   python scripts/split_tinyshakespeare.py
#   python src/main.py meta-train --config config/meta_train/cpu_mulo_general_warm.py --auto_resume true
# Cost: as cpu_mulo_general (~3.5 CPU-s per outer step): 400 outer steps ~25 CPU-minutes plus compilation.
_base_ = ["./cpu_mulo_general.py"]

init_theta = "pretrained:cpu_mulo_m_fmnist"  # lo.step_mult 0.03, exp_mult 0.001: as cpu_mulo_general's lo section
num_outer_steps = 400
schedule = dict(init_value=1e-4, peak_value=1e-3, warmup_steps=25, decay_steps=400, end_value=1e-4, exponent=1.0)
name_suffix = "_cpu-mulo-general-warm"
