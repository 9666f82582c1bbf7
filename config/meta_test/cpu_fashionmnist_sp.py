# The CPU-sized Fashion-MNIST suite for SP optimizers (the SP learned optimizer small_fc_mlp, SP Adam/AdamW): the
# same widths 64..2048, depth 3, on standard-parametrization MLPs (the paper tests SP LOs on SP tasks).
_base_ = ["./cpu_fashionmnist.py"]

optimizer = dict(name="lo")
lo = dict(name="small_fc_mlp")
task = [f"mlp-w{w}-d3_fashionmnist-28x28x1" for w in (64, 128, 256, 512, 1024, 2048)]
