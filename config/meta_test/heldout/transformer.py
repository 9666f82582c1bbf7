# Held-out row: muTransformer depth 1 at widths 128 and 512, 4x and 16x the meta-trained width 32 (heads of d_head 32),
# byte-level, sequence 32, batch 16 as in meta-training, trained on the *second* half of Tiny Shakespeare (meta-training
# read only the first; python scripts/split_tinyshakespeare.py writes both), 1000 steps, 3 seeds.
_base_ = ["../heldout_suite.py"]

task = [f"mutransformer-w{w}-d1_tinyshakespeare-s32-vbyte" for w in (128, 512)]
task_options = dict(d_head=32)
tinyshakespeare_path = "data/tinyshakespeare_halves/second_half.txt"
local_batch_size = 16
max_eval_examples = 512
