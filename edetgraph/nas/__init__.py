"""The feature-network search behind ``python -m edetgraph.search``: its stages as library
code. ``common`` (error, progress, atomic writes), ``candidates`` (screening on the graph
with the latency model), ``jobs`` (training, export through the parity gate and timing, each
a subprocess or a runtime runner), ``report`` (Pareto table, winners, plot). The search
space itself is data of the graph layer (``edetgraph.graph.search_space``).
"""
