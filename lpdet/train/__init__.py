"""Training: the loop, learning-rate schedules, checkpoints."""
