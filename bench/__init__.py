"""The benchmark: every backend on the same inputs, parity, agreement, AP, latency and
memory side by side (``python -m bench.run``), and the tools around it."""
