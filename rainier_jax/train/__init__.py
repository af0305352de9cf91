"""Training: the state, the jitted step, the loop, data, metrics and checkpoints."""
