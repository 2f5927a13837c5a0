"""The feature-network search behind ``python -m edetgraph.search``: its stages as library
code. ``common`` (error, progress, atomic writes), ``candidates`` (screening on the graph
with the latency model), ``explore`` (which candidates each budget trains at the first rung,
and the family), ``rungs`` (successive halving over training length, seeds at the last rung,
collapsed trainings retried), ``jobs`` (training, export through the parity gate and timing,
each a subprocess or a runtime runner), ``stats`` (mean ± std, Kendall's tau-b, the verdict
against the family), ``report`` (Pareto table, winners, plot). The search space itself is
data of the graph layer (``edetgraph.graph.search_space``).
"""
