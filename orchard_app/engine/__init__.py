"""Training engine: the epoch loop, optimisers/schedulers, checkpoints and interrupts."""
