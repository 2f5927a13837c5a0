"""Topology -> IR: node naming, the official BiFPN wiring, passes, and clear graph errors."""
import networkx as nx
import pytest
import yaml
from conftest import SPECS

from edetgraph.graph import ir, topology
from edetgraph.graph.build import build_ir
from edetgraph.graph.sizes import feature_sizes
from edetgraph.graph.spec import NodeSpec, SpecError, from_dict, load_spec

BASE = yaml.safe_load((SPECS / "d0.yaml").read_text())

# The official bifpn_config for P3-P7 as (level, input offsets), offsets 0-4 = P3..P7 and
# 5+ = earlier nodes, transcribed from the paper's figure / official comment diagram.
OFFICIAL_P3_P7 = [(6, [3, 4]), (5, [2, 5]), (4, [1, 6]), (3, [0, 7]), (4, [1, 7, 8]),
                  (5, [2, 6, 9]), (6, [3, 5, 10]), (7, [4, 11])]


def _offsets(nodes, lo, hi):
    ids = {f"p{lvl}": lvl - lo for lvl in range(lo, hi + 1)}
    out = []
    for i, n in enumerate(nodes):
        out.append((n.level, [ids[x] for x in n.inputs]))
        ids[n.name] = hi - lo + 1 + i
    return out


def test_bifpn_generator_matches_the_official_wiring():
    assert _offsets(topology.bifpn(3, 7), 3, 7) == OFFICIAL_P3_P7
    names = [n.name for n in topology.bifpn(3, 7)]
    assert names == ["td_p6", "td_p5", "td_p4", "out_p3", "out_p4", "out_p5", "out_p6", "out_p7"]


@pytest.mark.parametrize("lo,hi", [(2, 7), (3, 8), (3, 5), (4, 6)])
def test_bifpn_any_level_range(lo, hi):
    nodes = topology.bifpn(lo, hi)
    g = ir.cell_graph(nodes, lo, hi, "fastattn")
    assert sorted(g.graph["outputs"]) == list(range(lo, hi + 1))
    assert len(nodes) == 2 * (hi - lo)


def test_explicit_node_list_equals_generator():
    nodes = [{"name": n.name, "level": n.level, "inputs": list(n.inputs)} for n in topology.bifpn(3, 7)]
    explicit = from_dict(dict(BASE, fpn={"nodes": nodes, "channels": 64, "repeats": 3}))
    a, b = build_ir(explicit), build_ir(load_spec("d0"))
    assert nx.utils.graphs_equal(a, b)


def test_d0_ir_structure_and_checkpoint_scopes():
    g = build_ir(load_spec("d0"))
    fuse = [n for n, d in g.nodes(data=True) if d["op"] == "fuse"]
    assert len(fuse) == 24
    assert g.nodes["c2_out_p7"]["scope"] == "fpn_cells/cell_2/fnode7"
    assert g.nodes["c2_out_p7"]["combine_scope"] == "op_after_combine12"
    laterals = sorted(d["scope"] for _, d in g.nodes(data=True) if d["op"] == "resample" and d["conv"])
    assert laterals == ["fpn_cells/cell_0/fnode1/resample_0_2_6", "fpn_cells/cell_0/fnode2/resample_0_1_7",
                        "fpn_cells/cell_0/fnode3/resample_0_0_8", "fpn_cells/cell_0/fnode4/resample_0_1_9",
                        "fpn_cells/cell_0/fnode5/resample_0_2_10", "resample_p6"]
    # ports are the order of the node's inputs, never networkx iteration order
    assert ir.ordered_inputs(g, "c1_out_p4") == ["c0_out_p4", "c1_td_p4", "c1_out_p4.in2"]
    assert ir.ordered_inputs(g, "c0_out_p4") == ["c0_out_p4.in0", "c0_td_p4", "c0_out_p4.in2"]
    assert [g.nodes[o]["size"] for o in ir.ordered_outputs(g)] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]


def test_feature_sizes_round_up():
    assert feature_sizes((320, 320), 3, 7)[7] == (3, 3)        # Lite0: P7 is 3x3
    assert feature_sizes((640, 640), 3, 7)[7] == (5, 5)
    assert feature_sizes((384, 640), 3, 7)[3] == (48, 80)


def _cell(nodes, lo=3, hi=5):
    return ir.cell_graph([NodeSpec(*n) if isinstance(n, tuple) else n for n in nodes], lo, hi, "sum")


GOOD3 = [("a", 4, ("p4", "p5")), ("b", 3, ("p3", "a")), ("c", 5, ("p5", "b"))]


def test_valid_small_cell():
    g = _cell(GOOD3 + [("d", 4, ("a", "b", "c"))])
    assert g.graph["outputs"] == {4: "d", 3: "b", 5: "c"}


@pytest.mark.parametrize("nodes,match", [
    ([("a", 4, ("p4", "p5")), ("a", 3, ("p3", "a"))], r"node 'a': name used twice"),
    ([("a", 4, ("p4", "zz")), ("b", 3, ("p3",)), ("c", 5, ("p5",))], r"node 'a': input 'zz' names no node"),
    ([("a", 4, ("p4", "b")), ("b", 3, ("p3", "a")), ("c", 5, ("p5",))], r"cycle a -> b -> a|cycle b -> a -> b"),
    ([("b", 3, ("p3", "a")), ("a", 4, ("p4",)), ("c", 5, ("p5",))], r"node 'b': input 'a' is defined after it"),
    ([("a", 9, ("p4",))], r"node 'a': level 9 outside \[3, 5\]"),
    ([("a", 4, ())], r"node 'a': has no inputs"),
    ([("a", 4, ("p4",)), ("b", 3, ("p3",))], r"no node produces output level\(s\) \[5\]"),
    ([NodeSpec("a", 4, ("p4",), output=True), NodeSpec("b", 4, ("p5",), output=True),
      NodeSpec("c", 3, ("p3",), output=True), NodeSpec("d", 5, ("p5",), output=True)],
     r"node 'b': level 4 output produced twice"),
    ([NodeSpec("x", 4, ("p4",)), NodeSpec("a", 4, ("p4",), output=True),
      NodeSpec("c", 3, ("p3",), output=True), NodeSpec("d", 5, ("p5",), output=True)],
     r"node 'x': reaches no output"),
])
def test_bad_topologies_name_the_node(nodes, match):
    with pytest.raises(SpecError, match=match):
        _cell(nodes)


def test_bad_topology_in_a_spec_file(tmp_path):
    nodes = [{"name": "a", "level": 6, "inputs": ["p6", "p7"]}, {"name": "b", "level": 5, "inputs": ["p5", "nope"]}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(dict(BASE, fpn={"nodes": nodes, "channels": 64, "repeats": 1})))
    with pytest.raises(SpecError, match=r"fpn node 'b': input 'nope' names no node"):
        build_ir(load_spec(path))


def test_ir_check_catches_broken_graphs():
    g = build_ir(load_spec("d0"))
    h = g.copy()
    h.remove_node("fpn_p5")
    with pytest.raises(ir.GraphError, match=r"outputs cover levels \[3, 4, 6, 7\]"):
        ir.check(h)
    h = g.copy()
    u, v = next((u, v) for u, v, p in h.edges(data="port") if p == 1)
    h.edges[u, v]["port"] = 5
    with pytest.raises(ir.GraphError, match=r"input ports .* are not"):
        ir.check(h)
