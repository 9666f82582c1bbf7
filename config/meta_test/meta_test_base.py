# Meta-test defaults: train fresh tasks with a learned optimizer (from --checkpoint / --wandb_checkpoint_id) or a
# hand-designed one. Results: <output_dir>/meta-test_<optimizer>_<tasks>/<task>/seed<k>/{metrics.jsonl,summary.json};
# figures and tables: python src/main.py report RUN_DIR [RUN_DIR ...].
_base_ = ["../base.py"]

optimizer = dict(name="lo")
lo = dict(name="mup_small_fc_mlp")
num_runs = 5  # seeds seed, seed+1, ...: each changes the initialisation and the data order
num_inner_steps = 1000
local_batch_size = 128
test_interval = 100
test_steps_per_jit = 10
eval_batch_size = 2048
max_eval_examples = 10000
use_bf16 = False
