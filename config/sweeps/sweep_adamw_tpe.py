# SP AdamW tuned with TPE over ranges (100 trials) instead of the 504-point grid.
_base_ = ["./sweep_adamw.py"]

sweep_trials = 100
sweep_config = dict(
    _delete_=True,
    method="tpe",
    parameters=dict(
        learning_rate=dict(low=1e-5, high=0.1, log=True),
        beta1=[0.9, 0.95, 0.99],
        beta2=[0.95, 0.99, 0.999],
        weight_decay=dict(low=1e-4, high=0.1, log=True),
    ),
)
