# Paper suite: decoder-only muTransformer depth 3 on LM1B (SentencePiece 32k, sequence 64), widths 192..3072,
# batch 128, 5000 steps, 5 seeds. Heads = width / d_head (d_head 64: 3 heads at 192, 48 at 3072; the paper used
# 3..16 heads, i.e. a larger d_head at the big widths). Needs --vocab_path (a SentencePiece model).
_base_ = ["./meta_test_base.py"]

task = [f"mutransformer-w{w}-d3_lm1b-s64-v32k" for w in (192, 384, 768, 1024, 2048, 3072)]
local_batch_size = 128
num_inner_steps = 5000
max_eval_examples = 10000
eval_batch_size = 512
