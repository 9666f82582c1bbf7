# CPU-sized suite: byte-level muTransformer depth 2 on Tiny Shakespeare (sequence 64), widths 64..512 (d_head 64),
# batch 32, 1000 steps, 3 seeds. Cost on 2 CPU cores grows ~width^2: ~0.5 s/step at width 256, ~2 s/step at 512;
# widths 1024/2048 (--task ...) take hours per seed on a CPU.
_base_ = ["./meta_test_base.py"]

task = [f"mutransformer-w{w}-d2_tinyshakespeare-s64-vbyte" for w in (64, 128, 256, 512)]
local_batch_size = 32
num_inner_steps = 1000
num_runs = 3
test_interval = 100
max_eval_examples = 512
eval_batch_size = 128
