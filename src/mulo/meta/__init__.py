"""Meta-training: truncation schedules, truncated unrolls, PES/ES estimators, the outer loop and checkpoints."""
