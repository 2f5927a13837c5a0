"""The graph layer never imports TensorFlow, and inspect answers fast without it."""
import json
import time


from conftest import OFFICIAL, run_py

BLOCK_TF = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):
            raise ImportError('tensorflow is blocked in this test')
sys.meta_path.insert(0, Block())
"""


def test_graph_modules_import_without_tensorflow():
    code = BLOCK_TF + """
import edetgraph.graph.spec, edetgraph.graph.scaling, edetgraph.graph.blocks, edetgraph.graph.topology
import edetgraph.graph.ir, edetgraph.graph.build, edetgraph.graph.cost, edetgraph.inspect, edetgraph.graph.draw
print('ok', 'tensorflow' in sys.modules)
"""
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "False"]


def test_inspect_every_spec_without_tensorflow_under_2s(tmp_path):
    code = BLOCK_TF + """
import json, time
from edetgraph.inspect import main
times = {}
for name in sys.argv[1:]:
    t = time.perf_counter()
    main(['--spec', name, '--json', '--draw', f'%s/{name}.svg'])
    times[name] = time.perf_counter() - t
print('TIMES', json.dumps(times))
""" % tmp_path
    t0 = time.perf_counter()
    r = run_py(code, *OFFICIAL)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    times = json.loads(r.stdout.split("TIMES", 1)[1])
    assert max(times.values()) < 2.0, times
    # the whole process (interpreter start, imports, 15 specs) stays small too
    assert wall < 2.0 * len(OFFICIAL)
    assert (tmp_path / "d7x.svg").read_text().startswith("<svg")
