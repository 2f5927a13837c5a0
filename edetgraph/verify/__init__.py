"""Verification, shared by the exporters and the benchmark: runners per backend, the parity
gate with its float64 reference, detection comparison, and COCO AP of a file against the
TF model it came from."""
