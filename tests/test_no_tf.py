"""The graph layer never imports TensorFlow, and inspect answers fast without it."""
import json
import time

import pytest

from conftest import OFFICIAL, run_py

BLOCK_TF = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):
            raise ImportError('tensorflow is blocked in this test')
sys.meta_path.insert(0, Block())
"""


def test_the_public_api_answers_graph_questions_without_tensorflow():
    code = BLOCK_TF + """
import edetgraph
spec = edetgraph.load_spec('d0')
g = edetgraph.build_ir(spec)
print(edetgraph.model_cost(spec).total.params_trainable, 'tensorflow' in sys.modules)
"""
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3880067", "False"]      # D0's official parameter count


def test_the_public_api_names_resolve_to_their_modules():
    import edetgraph
    from edetgraph.checkpoints.checkpoint import load_checkpoint
    from edetgraph.nn.model import build_model
    from edetgraph.task.detector import Detector
    assert edetgraph.build_model is build_model and edetgraph.Detector is Detector
    assert edetgraph.load_checkpoint is load_checkpoint
    assert set(edetgraph.__all__) <= set(dir(edetgraph))
    try:
        edetgraph.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_graph_modules_import_without_tensorflow():
    code = BLOCK_TF + """
import edetgraph.graph.spec, edetgraph.graph.scaling, edetgraph.graph.blocks, edetgraph.graph.topology
import edetgraph.graph.ir, edetgraph.graph.build, edetgraph.graph.cost, edetgraph.inspect, edetgraph.graph.draw
print('ok', 'tensorflow' in sys.modules)
"""
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "False"]


@pytest.mark.serial   # a wall-clock bound: runs alone (scripts/test)
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
