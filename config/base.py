# Every run-level config key mulo knows, with its default, and the default component of each section. Types, accepted
# values and help of the run-level keys live in src/mulo/app/config.py (SCHEMA; this file and SCHEMA list the same
# keys, tests check it); a section's keys, defaults and help are its component's hyper-parameter dataclass (`python
# src/main.py meta-test --help` lists them). Other configs inherit from this file through `_base_`; every key can be
# overridden on the command line as `--key value`, a section's as `--lo.hidden_size 64`.
# Mirrors the reference's config_base.py without its federated leftovers (num_grads, num_local_steps, ...).

# ---- what to run: `optimizer` is what meta-test, sweeps and the coordinate check run: "lo" (the `lo` section's
# learned optimizer) or a hand-designed one with its hyper-parameters, e.g. dict(name="muadam", learning_rate=3e-3)
optimizer = dict(name="lo")
lo = dict(name="mup_small_fc_mlp")  # the learned optimizer (meta-train trains it), e.g. dict(name=..., hidden_size=64)
estimator = dict(name="pes")  # meta-gradient estimator: std, trunc_length, num_pairs (antithetic pairs per task)
truncation = dict(name="log_uniform")  # episode lengths: min_length, random_offset
task = ["mumlp-w128-d3_fashionmnist-28x28x1"]
seed = 0
name_suffix = ""
output_dir = "checkpoints"

# ---- tasks: muP multipliers and head size (mup_input_mult, mup_output_mult, mup_hidden_lr_mult, d_head)
task_options = dict()

# ---- data
data_dir = None
tfds_download = False
fashion_mnist_dir = None
tinyshakespeare_path = None
vocab_path = None
local_batch_size = 128
eval_batch_size = 2048
max_eval_examples = 10000
prefetch_batches = 4
data_on_device = "auto"  # on | off | auto (accelerators)

# ---- meta-training
num_outer_steps = 5000
num_inner_steps = 1000
steps_per_jit = 10
meta_loss_split = "train"
meta_loss_norm = "none"  # none | init_loss: each task's meta-loss divided by its value at initialisation
task_batch_sizes = None  # one batch size per task (None: local_batch_size for every task)
meta_learning_rate = 1e-4
schedule = dict()
meta_weight_decay = 1e-4
meta_grad_clip = None
init_theta = None  # start theta from a learned optimizer (theta file, run dir, pretrained:NAME) instead of at random
save_iter = 50
checkpoints_to_keep = 10
auto_resume = False

# ---- meta-testing
num_runs = 5
test_interval = 50
skip_test = False
checkpoint = None
wandb_checkpoint_id = None
use_bf16 = False
test_steps_per_jit = 10
gradient_accumulation_steps = 1

# ---- sweeps
sweep_config = dict()
storage = None
study_name = None
sweep_trials = None
sweep_objective_frac = 0.05

# ---- coordinate check
widths = [128, 256, 512, 1024]
coord_steps = 3

# ---- logging
wandb_mode = "offline"
wandb_project = "mulo"
wandb_entity = None
log_every = 1
progress = True

# ---- runtime
compilation_cache_dir = "~/.cache/mulo/jax"
compilation_cache_max_gb = 4.0
jax_default_matmul_precision = "float32"  # float32 | tensorfloat32 | bfloat16

# ---- devices and processes (see README "Scaling out")
data_parallel = 1
distributed = "auto"
coordinator_address = None
num_processes = None
process_id = None
cluster_detection_method = None
