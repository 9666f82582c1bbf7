# Every config key mulo knows, with its default. Types, accepted values and help live in src/mulo/config.py (SCHEMA);
# this file and SCHEMA must list the same keys (tests check it). Other configs inherit from this file through
# `_base_`, and every key can be overridden on the command line as `--key value`.
# Mirrors the reference's config_base.py without its federated leftovers (num_grads, num_local_steps, ...).

# ---- what to run
optimizer = "mup_small_fc_mlp"
task = ["mumlp-w128-d3_fashionmnist-28x28x1"]
seed = 0
name_suffix = ""
output_dir = "checkpoints"

# ---- tasks: muP multipliers and model shape
mup_input_mult = 1.0
mup_output_mult = 1.0
mup_hidden_lr_mult = 1.0
d_head = 64

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

# ---- learned optimizers
hidden_size = 32
adafac_step_mult = None
adafac_exp_mult = 0.001
lo_clip_grad = False
lo_impl = "fused"  # reference | fused | pallas (same function)
lo_eps_scaling = "none"  # none | fan_in: the LO normaliser's epsilon, 1e-5 or 1e-5/fan_in (stored with theta)

# ---- hand-designed optimizers (meta-test, sweeps)
learning_rate = 1e-3
beta1 = 0.9
beta2 = 0.999
weight_decay = 1e-4
sgd_momentum = 0.0
warmup_steps = 0
cosine_decay = False
end_lr_ratio = 0.1

# ---- VeLO (velo, mup_velo; also adafac_step_mult (None: 0.001) and adafac_exp_mult), stored with theta
velo_lstm_hidden_size = 16
velo_param_inits = 8
velo_ff_hidden_size = 4
velo_ff_hidden_layers = 2

# ---- meta-training
num_outer_steps = 5000
num_inner_steps = 1000
num_tasks = 8
steps_per_jit = 10
trunc_length = 50
pes_std = 0.01
gradient_estimator = "pes"
truncation_schedule = "log_uniform"
truncation_schedule_min_length = 100
random_initial_iteration_offset = 50
meta_loss_split = "train"
meta_loss_norm = "none"  # none | init_loss: each task's meta-loss divided by its value at initialisation
task_batch_sizes = None  # one batch size per task (None: local_batch_size for every task)
meta_learning_rate = 1e-4
schedule = dict()
meta_weight_decay = 1e-4
meta_grad_clip = None
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
