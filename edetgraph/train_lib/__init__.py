"""Pieces of the training loop (`edetgraph.trainer`): settings, schedule, optimizer and EMA,
distribution strategies, checkpointing and progress reporting."""
