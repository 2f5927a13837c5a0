"""The graph layer: specs, topologies, the IR, its passes and the cost model, in plain Python
with networkx. Never imports TensorFlow (tests/test_layers.py checks every module), so a
detector can be written, checked, drawn and costed in a second."""
