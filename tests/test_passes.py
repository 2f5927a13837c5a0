"""Graph passes: prune_dead, share_resample, pass diffs; inspect's pass report, --compare,
and one clear error naming the node for each kind of invalid custom spec."""
import json

import networkx as nx
import pytest
import yaml
from conftest import OFFICIAL, SPECS, run_py

from edetgraph.graph import ir, passes, topology
from edetgraph.graph.build import build_ir
from edetgraph.graph.cost import model_cost
from edetgraph.graph.spec import SpecError, from_dict, load_spec
from edetgraph.inspect import main

BASE = yaml.safe_load((SPECS / "d0.yaml").read_text())


def _nodes(gen=topology.panet, lo=3, hi=7):
    return [{"name": n.name, "level": n.level, "inputs": list(n.inputs)} for n in gen(lo, hi)]


def _spec(nodes, repeats=3, **top):
    return from_dict(dict(BASE, fpn={"nodes": nodes, "channels": 64, "repeats": repeats}, **top))


def _with(nodes, name, **changes):
    return [dict(n, **changes) if n["name"] == name else n for n in nodes]


# ------------------------------------------------------------------ official specs untouched

@pytest.mark.parametrize("name", OFFICIAL)
def test_optional_passes_change_nothing_on_official_specs(name):
    spec = load_spec(name)
    diffs = []
    g = build_ir(spec, prune=True, share=True, diffs=diffs)
    assert nx.utils.graphs_equal(g, build_ir(spec))
    changed = {d.name: d.summary() for d in diffs}
    assert changed["prune_dead"] == changed["share_resample"] == "no change"


def test_sharing_resamples_with_conv_is_opt_in_and_changes_the_model():
    """The official BiFPN has two 1x1 laterals from backbone P4 (and P5), distinct weights."""
    g = build_ir(load_spec("d0"))
    h = passes.share_resample(g, with_conv=True)
    removed = sorted(set(g) - set(h))
    assert removed == ["c0_out_p4.in0", "c0_out_p5.in0"]
    assert h.nodes["c0_td_p4.in0"]["shared"] == ["c0_out_p4.in0"]
    assert ir.ordered_inputs(h, "c0_out_p4")[0] == "c0_td_p4.in0"
    before, after = model_cost(load_spec("d0"), g), model_cost(load_spec("d0"), h)
    dropped = sum(before.by_node[n].params_trainable for n in removed)
    assert dropped > 0
    assert after.total.params_trainable == before.total.params_trainable - dropped


# ------------------------------------------------------------------ share_resample

def _double_p3_spec(repeats=3, **top):
    """PANet where both P6 nodes also read p3: two identical P3 -> P6 max-pools per cell."""
    nodes = _with(_nodes(), "td_p6", inputs=["p6", "td_p7", "p3"])
    return _spec(_with(nodes, "out_p6", inputs=["td_p6", "out_p5", "p3"]), repeats, **top)


def test_share_resample_merges_conv_free_duplicates_only():
    spec = _double_p3_spec()
    g = build_ir(spec)
    diffs = []
    h = build_ir(spec, share=True, diffs=diffs)
    (share,) = [d for d in diffs if d.name == "share_resample"]
    # cells 1 and 2 read the previous cell's 64-wide P3: shared; cell 0 reads the backbone's
    # 40-wide P3 through two 1x1 convs: kept apart
    assert share.nodes_removed == ("c1_out_p6.in2", "c2_out_p6.in2")
    assert "c0_out_p6.in2" in h and h.nodes["c0_out_p6.in2"]["conv"]
    assert h.number_of_nodes() == g.number_of_nodes() - 2
    assert h.number_of_edges() == g.number_of_edges() - 2
    assert ir.ordered_inputs(h, "c1_out_p6")[2] == "c1_td_p6.in2"
    cg, ch = model_cost(spec, g).total, model_cost(spec, h).total
    assert ch.params_total == cg.params_total
    pool = model_cost(spec, g).by_node["c1_out_p6.in2"].ops["MaxPool"]
    assert pool > 0 and cg.ops["MaxPool"] - ch.ops["MaxPool"] == 2 * pool


def test_share_resample_merges_chains():
    g = nx.DiGraph(min_level=3, max_level=5)
    g.add_node("p3", op="input", level=3, channels=8)
    rs = dict(op="resample", channels=8, conv=False, bn=True, conv_after=False)
    for c in "ab":
        g.add_node(f"r4{c}", level=4, in_level=3, **rs)
        g.add_node(f"r5{c}", level=5, in_level=4, **rs)
        g.add_edge("p3", f"r4{c}", port=0)
        g.add_edge(f"r4{c}", f"r5{c}", port=0)
        g.add_node(f"f{c}", op="fuse", level=5, channels=8)
        g.add_edge(f"r5{c}", f"f{c}", port=0)
    g.add_node("f5", op="fuse", level=5, channels=8)
    g.add_edge("fa", "f5", port=0)
    g.add_edge("fb", "f5", port=1)
    g.add_node("f4", op="fuse", level=4, channels=8)
    g.add_edge("r4b", "f4", port=0)
    for lvl, src in ((3, "p3"), (4, "f4"), (5, "f5")):
        g.add_node(f"o{lvl}", op="output", level=lvl, channels=8)
        g.add_edge(src, f"o{lvl}", port=0)
    h = passes.share_resample(g)
    assert sorted(set(g) - set(h)) == ["r4b", "r5b"]
    assert set(h.successors("r4a")) == {"r5a", "f4"} and set(h.successors("r5a")) == {"fa", "fb"}
    assert passes.diff("share_resample", g, h).summary() == "+0/-2 nodes, +2/-4 edges"


# ------------------------------------------------------------------ prune_dead

P = _nodes()
# PANet plus 'spare' (fnode7), which nothing reads
DEAD_SPEC_NODES = P[:7] + [{"name": "spare", "level": 5, "inputs": ["p5", "td_p6"]}] + P[7:]

def test_dead_node_is_an_error_unless_pruned():
    spec = _spec(DEAD_SPEC_NODES)
    with pytest.raises(SpecError, match=r"fpn node 'spare': reaches no output .*--prune"):
        build_ir(spec)
    diffs = []
    g = build_ir(spec, prune=True, diffs=diffs)
    (prune,) = [d for d in diffs if d.name == "prune_dead"]
    assert prune.nodes_removed == ("c0_spare", "c1_spare", "c2_spare")
    assert not any("spare" in n for n in g)
    live = build_ir(_spec(_nodes()))
    assert g.number_of_nodes() == live.number_of_nodes()
    # survivors keep the checkpoint numbering of the spec's node list (spare was fnode7)
    assert g.nodes["c0_out_p6"]["scope"] == "fpn_cells/cell_0/fnode9"
    assert model_cost(spec, g).total.params_trainable == model_cost(
        _spec(_nodes()), live).total.params_trainable


def test_unread_cell_input_is_an_error_unless_pruned():
    """An FPN whose P3 node ignores p3: every cell's P3 output but the last feeds nothing."""
    nodes = _with(_nodes(topology.fpn), "td_p3", inputs=["td_p4"])
    with pytest.raises(SpecError, match=r"fpn node 'td_p3' of cell 0 \(IR node 'c0_td_p3'\):"
                                        r" reaches no output, since no fpn node reads cell"
                                        r" input\(s\) 'p3'"):
        build_ir(_spec(nodes))
    g = build_ir(_spec(nodes, repeats=1))       # one cell: nothing is dead
    assert "c0_td_p3" in g
    diffs = []
    g = build_ir(_spec(nodes), prune=True, diffs=diffs)
    assert [d.nodes_removed for d in diffs if d.name == "prune_dead"] == [("c0_td_p3", "c1_td_p3")]
    assert g.nodes["c2_td_p3"]["op"] == "fuse"


def test_pruned_graph_lowers_to_a_model_without_the_dead_weights():
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    from edetgraph.nn.model import DetectionModel

    spec = _spec(DEAD_SPEC_NODES, repeats=2, image_size=128, num_classes=3)
    g = build_ir(spec, prune=True)
    model = DetectionModel(spec, graph=g)
    assert not [v.name for v in model.variables if "/fnode7/" in v.name]
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == \
        model_cost(spec, g).total.params_trainable
    out = model.raw_outputs(tf.zeros([1, 128, 128, 3]))
    assert tuple(out["cls_l3"].shape) == (1, 16, 16, 27)


def test_shared_graph_computes_exactly_what_the_unshared_one_does():
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    from edetgraph.nn.model import DetectionModel

    spec = _double_p3_spec(repeats=2, image_size=128, num_classes=3)
    x = tf.random.stateless_normal([1, 128, 128, 3], [3, 4])
    a = DetectionModel(spec, graph=build_ir(spec)).raw_outputs(x)
    b = DetectionModel(spec, graph=build_ir(spec, share=True)).raw_outputs(x)
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())


# ------------------------------------------------------------------ pass diffs

def test_pass_diffs_of_the_default_pipeline():
    trace, diffs = [], []
    g = build_ir(load_spec("d0"), trace, diffs=diffs)
    assert [d.name for d in diffs] == [t[0] for t in trace] == \
        ["repeat_cells", "insert_resampling", "annotate_sizes"]
    assert [(d.nodes, d.edges) for d in diffs] == [t[1:] for t in trace]
    per_edge = [n for n, d in g.nodes(data=True) if d["op"] == "resample" and "." in n]
    ins = diffs[1]
    assert sorted(ins.nodes_added) == sorted(per_edge) and not ins.nodes_removed
    assert len(ins.edges_removed) == len(per_edge) and len(ins.edges_added) == 2 * len(per_edge)
    assert diffs[2].summary() == "no change"


def _write(tmp_path, data, name="custom.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_inspect_reports_what_each_pass_changed(tmp_path, capsys):
    path = _write(tmp_path, dict(BASE, fpn={"nodes": DEAD_SPEC_NODES, "repeats": 3}))
    assert main(["--spec", path, "--prune", "--share-resample"]) == 0
    text = capsys.readouterr().out
    assert "prune_dead" in text and "+0/-3 nodes, +0/-6 edges" in text
    assert "removed: c0_spare, c1_spare, c2_spare" in text
    assert "share_resample" in text
    assert main(["--spec", path, "--prune", "--json"]) == 0
    passes = json.loads(capsys.readouterr().out)["graph"]["passes"]
    prune = next(p for p in passes if p["pass"] == "prune_dead")
    assert prune["nodes_removed"] == 3 and prune["removed"] == ["c0_spare", "c1_spare", "c2_spare"]
    assert {"pass", "nodes", "edges"} <= set(passes[0])


# ------------------------------------------------------------------ one clear error per bad spec

def _fpn(nodes):
    return dict(BASE, fpn={"nodes": nodes, "repeats": 2})


F = _nodes(topology.fpn)
BAD_SPECS = [   # (case, spec data, phrases the one error line must contain)
    ("cycle", _fpn(_with(P, "td_p7", inputs=["p7", "out_p7"])), ("cycle", "out_p7 -> td_p7")),
    ("self loop", _fpn(_with(P, "td_p6", inputs=["p6", "td_p6"])),
     ("'td_p6'", "cycle td_p6 -> td_p6")),
    ("dangling", _fpn(_with(P, "td_p5", inputs=["p5", "td_p66"])),
     ("'td_p5'", "'td_p66' names no node")),
    ("order", _fpn([P[1], P[0]] + P[2:]), ("'td_p6'", "input 'td_p7' is defined after it")),
    ("level gap", _fpn(_with(P, "out_p7", level=8)), ("'out_p7'", "level 8 outside [3, 7]")),
    ("backbone gap", dict(BASE, backbone={"name": "efficientnet-b0", "blocks": [
        "r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25"]},   # ends at stride 4
                          anchors=dict(BASE["anchors"], min_level=4)),
     ("'resample_p4'", "backbone 'efficientnet-b0' ends at level 2")),
    ("no inputs", _fpn(_with(P, "td_p7", inputs=[])), ("'td_p7'", "has no inputs")),
    ("duplicate", _fpn(P + [dict(P[0])]), ("'td_p7'", "name used twice")),
    ("input twice", _fpn(_with(P, "td_p4", inputs=["p4", "p4"])), ("'td_p4'", "listed twice")),
    ("dead node", _fpn(DEAD_SPEC_NODES), ("'spare'", "reaches no output")),
    ("unread input", _fpn(_with(F, "td_p3", inputs=["td_p4"])),
     ("'td_p3'", "reads cell input(s) 'p3'")),
    ("missing level", _fpn([_with(F, "td_p6", inputs=["p6", "p7"])[i] for i in range(1, 5)]),
     ("no node produces output level(s) [7]",)),
    ("output twice", _fpn(_with(_with(P, "td_p3", output=True), "out_p3", output=True)),
     ("'out_p3'", "level 3 output produced twice")),
    ("unknown generator", dict(BASE, fpn=dict(BASE["fpn"], topology="bifpn2")),
     ("'bifpn2'", "not registered")),
    ("nasfpn levels", dict(BASE, fpn=dict(BASE["fpn"], topology="nasfpn"),
                           anchors=dict(BASE["anchors"], max_level=8)),
     ("'nasfpn'", "published cell on 5 levels")),
]


@pytest.mark.parametrize("case,data,phrases", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_invalid_custom_specs_give_one_clear_line_naming_the_node(tmp_path, capsys, case, data,
                                                                  phrases):
    path = _write(tmp_path, data)
    assert main(["--spec", path]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), cap.err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


# ------------------------------------------------------------------ --compare

def test_inspect_compare_table_json_and_drawings(tmp_path, capsys):
    specs = ["topologies/fpn", "topologies/panet", "topologies/bifpn"]
    assert main(["--compare", *specs, "--set", "fpn.channels=64"]) == 0
    text = capsys.readouterr().out
    assert "paper" in text and "d3-bifpn" in text and "0.88x" in text and "0.68x" in text
    assert main(["--compare", *specs, "--json", "--draw", str(tmp_path / "fig.svg")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["d3-fpn", "d3-panet", "d3-bifpn"]
    assert rows[0]["ratio"]["fpn_params"] == 1.0 and rows[2]["ratio"]["paper_flops"] == 0.68
    assert rows[2]["passes"][0]["pass"] == "repeat_cells"
    for r, stem in zip(rows, ("fpn", "panet", "bifpn")):
        assert r["drawing"].endswith(f"fig-{stem}.svg")
        assert (tmp_path / f"fig-{stem}.svg").read_text().startswith("<svg")
    assert main(["--compare", "topologies/fpn", "nope"]) == 2
    assert "nope: no such spec file" in capsys.readouterr().err


def test_inspect_needs_exactly_one_of_spec_and_compare(capsys):
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["--spec", "d0", "--compare", "d1"])
    capsys.readouterr()


def test_compare_and_passes_need_no_tensorflow():
    code = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):
            raise ImportError('tensorflow is blocked in this test')
sys.meta_path.insert(0, Block())
from edetgraph.inspect import main
rc = main(['--compare', 'topologies/fpn', 'topologies/nasfpn', 'topologies/qufpn', '--prune',
           '--share-resample', '--json'])
print('TF', 'tensorflow' in sys.modules, rc)
"""
    r = run_py(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "TF False 0"


def test_spec_fields_turn_the_passes_on_for_the_model_too():
    """fpn.prune / fpn.share_resample in a spec reach build_ir's default call (so build_model
    and training see the pruned, shared graph), not only inspect's flags."""
    from edetgraph.graph.build import build_ir as _build
    from edetgraph.graph.spec import load_spec as _load
    fc = "specs/topologies/fc_fpn.yaml"
    plain = _build(_load(fc))
    shared = _build(_load(fc, ["fpn.share_resample=true"]))
    assert shared.number_of_nodes() < plain.number_of_nodes()
    d0 = _build(_load("d0"))
    assert _build(_load("d0", ["fpn.prune=true"])).number_of_nodes() == d0.number_of_nodes()
