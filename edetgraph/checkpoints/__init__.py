"""Checkpoints: released archives and folders found and unpacked safely (``archive``, no
TensorFlow), the released TF1 layout with EMA shadows and edetgraph's own format read and
written by variable name (``checkpoint``)."""
