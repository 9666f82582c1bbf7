# The held-out suite of the general muLO (config/meta_train/cpu_mulo_general_warm.py, the shipped one, and the
# other trials): what every row shares. Each row is a config in config/meta_test/heldout/ built on this one, on
# tasks the meta-training never touched:
#   mlp_depth8.py     muMLP depth 8 (meta-trained: depth 3) on Fashion-MNIST, widths 128-2048 (4x-64x)
#   transformer.py    muTransformer at 4x and 16x the meta-trained width, trained on the *second* half of Tiny
#                     Shakespeare (meta-training only read the first half; scripts/split_tinyshakespeare.py)
#   vit.py            muViT at 4x the meta-trained width
#   horizon5x.py      muMLP depth 3 at width 1024 for 5000 steps, 5x the meta-training horizon
# Baseline: MuAdam with its lr tuned on a grid at the row's narrowest width (config/sweeps/heldout/<row>.py) and
# transferred to the other widths (muP). One command runs the sweeps, MuAdam, the general muLO and the Fashion-MNIST
# muLO on every row, then `report`:
#   scripts/heldout_suite.sh OUT_DIR [GENERAL_CHECKPOINT] [--key value ...]
# (extra options go to every sweep and meta-test, e.g. --num_inner_steps 20 --num_runs 1 for a dry run).
_base_ = ["./meta_test_base.py"]

num_runs = 3
num_inner_steps = 1000
test_interval = 100
max_eval_examples = 2000
eval_batch_size = 500
