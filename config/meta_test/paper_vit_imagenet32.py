# Paper suite (Therien et al., Tab. 10): muViT depth 3 on ImageNet 32x32, widths 192..3072 with the paper's heads
# (3, 6, 8, 8, 16, 16; mulo.tasks.vit.PAPER_HEADS), MLP 4x width, batch 1024, 5000 steps, 5 seeds. Patches of 16x16
# (the reference's: 2x2 patches + the class token); another size with -p{P} in the names, e.g. muvit-w192-d3-p4_...
# For SP learned optimizers pass the SP twins: --task vit-w192-d3_imagenet-32x32x3,...
_base_ = ["./meta_test_base.py"]

task = [f"muvit-w{w}-d3_imagenet-32x32x3" for w in (192, 384, 768, 1024, 2048, 3072)]
local_batch_size = 1024
num_inner_steps = 5000
max_eval_examples = 50000
eval_batch_size = 5000
