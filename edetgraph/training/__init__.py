"""Training: settings (``config``), the trainer and its train step, optimiser, EMA and
schedule, distribution strategies (TPU, GPUs, workers), step checkpoints and progress."""
