"""The topology zoo: wiring against the published definitions, every level range and fusion
method through the spec, the shipped spec files, the Table 5 comparison, and (TF) every
topology builds, runs forward and trains a few steps at a small size."""
import networkx as nx
import pytest
import yaml
from conftest import SPECS

from edetgraph.graph import compare, ir, topology
from edetgraph.graph.build import build_ir
from edetgraph.graph.cost import model_cost
from edetgraph.graph.spec import WEIGHT_METHODS, SpecError, from_dict, list_specs, load_spec

TABLE5 = ["fpn", "panet", "nasfpn", "fc_fpn", "bifpn_unweighted", "bifpn"]   # the paper's rows
ZOO = TABLE5 + ["qufpn"]
GENERATORS = ["fpn", "panet", "nasfpn", "fc_fpn", "bifpn", "qufpn"]
BASE = yaml.safe_load((SPECS / "d0.yaml").read_text())
# A tiny model that still has every part: small backbone, 16 channels, 2 cells, 1 head layer.
TINY = ["image_size=128", "fpn.channels=16", "fpn.repeats=2", "head.repeats=1", "num_classes=3",
        "backbone.width=0.25", "backbone.depth=0.1"]


def _offsets(nodes, lo, hi):
    ids = {f"p{lvl}": lvl - lo for lvl in range(lo, hi + 1)}
    out = []
    for i, n in enumerate(nodes):
        out.append((n.level, [ids[x] for x in n.inputs]))
        ids[n.name] = hi - lo + 1 + i
    return out


# Official tf2/fpn_configs_test.py, test_qufpn_dynamic_l3l7: (level, input offsets).
QUFPN_P3_P7 = [(6, [3, 4]), (5, [2, 5]), (4, [1, 6]), (3, [0, 7]), (4, [1, 7, 8]), (5, [2, 6, 9]),
               (6, [3, 5, 10]), (7, [4, 11]), (4, [1, 0]), (5, [2, 13]), (6, [3, 14]), (7, [4, 15]),
               (6, [3, 15, 16]), (5, [2, 14, 17]), (4, [1, 13, 18]), (3, [0, 19]), (7, [12, 16]),
               (6, [11, 17]), (5, [10, 18]), (4, [9, 19]), (3, [8, 20])]


def test_qufpn_matches_the_official_config():
    nodes = topology.qufpn(3, 7)
    assert _offsets(nodes, 3, 7) == QUFPN_P3_P7
    quad = [n for n in nodes if n.name.startswith("q_")]
    assert len(quad) == 5 and all(n.weight_method == "fastattn" for n in quad)
    assert all(n.weight_method is None for n in nodes if n not in quad)


# NAS-FPN's published cell (Ghiasi et al. 2019, TF Model Garden NASFPN_BLOCK_SPECS):
# (level, the two merge inputs as offsets into [P3..P7, new nodes...], is_output).
NASFPN_PUBLISHED = [(4, (1, 3), False), (4, (1, 5), False), (3, (0, 6), True), (4, (6, 7), True),
                    (5, (7, 8), True), (7, (6, 9), True), (6, (9, 10), True)]


def _published_rule(blocks):
    """The published builder's extra inputs: an output merge also sums every feature at its
    level that nothing has read yet."""
    used, levels, out = [0] * 5, [3, 4, 5, 6, 7], []
    for level, (a, b), is_out in blocks:
        used[a] += 1
        used[b] += 1
        extra = [j for j in range(len(levels)) if is_out and used[j] == 0 and levels[j] == level]
        for j in extra:
            used[j] += 1
        out.append((level, [a, b] + extra))
        levels.append(level)
        used.append(0)
    return out


def test_nasfpn_is_the_published_cell():
    nodes = topology.nasfpn(3, 7)
    assert _offsets(nodes, 3, 7) == _published_rule(NASFPN_PUBLISHED)
    assert [n.output for n in nodes] == [o for _, _, o in NASFPN_PUBLISHED]
    shifted = topology.nasfpn(4, 8)
    assert [n.level for n in shifted] == [n.level + 1 for n in nodes]
    with pytest.raises(SpecError, match=r"'nasfpn' is the published cell on 5 levels; got P2-P7"):
        topology.nasfpn(2, 7)


def test_fpn_panet_fc_fpn_wiring():
    assert _offsets(topology.fpn(3, 7), 3, 7) == [(7, [4]), (6, [3, 5]), (5, [2, 6]), (4, [1, 7]),
                                                  (3, [0, 8])]
    panet = topology.panet(3, 7)
    assert _offsets(panet, 3, 7)[5:] == [(3, [9]), (4, [8, 10]), (5, [7, 11]), (6, [6, 12]),
                                        (7, [5, 13])]
    fc = topology.fc_fpn(3, 7)
    assert [n.inputs[:2] for n in fc[5:]] == [(f"td_p{lvl}", f"out_p{lvl - 1}") if lvl > 3
                                              else ("td_p3", "p3") for lvl in range(3, 8)]
    assert all(set(n.inputs) >= {"p3", "p4", "p5", "p6", "p7"} for n in fc[5:])


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("lo,hi", [(3, 7), (2, 7), (3, 8), (2, 6)])
def test_every_generator_builds_for_level_ranges(name, lo, hi):
    if name == "nasfpn" and hi - lo != 4:
        pytest.skip("the published NAS-FPN cell has exactly 5 levels (error tested above)")
    size = 2 ** hi
    spec = from_dict(dict(BASE, image_size=size, fpn=dict(BASE["fpn"], topology=name),
                          anchors=dict(BASE["anchors"], min_level=lo, max_level=hi)))
    g = build_ir(spec)
    assert [g.nodes[o]["level"] for o in ir.ordered_outputs(g)] == list(range(lo, hi + 1))
    inputs = sorted(d["level"] for _, d in g.nodes(data=True) if d["op"] == "input")
    assert inputs == list(range(lo, min(hi, 5) + 1))    # P2 is the backbone's stride-4 feature
    assert model_cost(spec, g).total.params_trainable > 0


@pytest.mark.parametrize("method", WEIGHT_METHODS)
@pytest.mark.parametrize("name", GENERATORS)
def test_every_fusion_method_through_the_spec(name, method):
    spec = from_dict(dict(BASE, fpn=dict(BASE["fpn"], topology=name, weight_method=method)))
    g = build_ir(spec)
    methods = {n: d["weight_method"] for n, d in g.nodes(data=True) if d["op"] == "fuse"}
    quad = {n for n in methods if n.split("_", 1)[1].startswith("q_")}
    assert {methods[n] for n in methods if n not in quad} == {method}
    assert {methods[n] for n in quad} <= {"fastattn"}      # QuFPN's quad fusion is fixed


def test_per_node_weight_method_overrides_the_fpn_default():
    nodes = [{"name": n.name, "level": n.level, "inputs": list(n.inputs)}
             for n in topology.panet(3, 7)]
    nodes[0]["weight_method"] = "channel_attn"
    spec = from_dict(dict(BASE, fpn={"nodes": nodes, "weight_method": "sum", "repeats": 2}))
    g = build_ir(spec)
    assert g.nodes["c1_td_p7"]["weight_method"] == "channel_attn"
    assert g.nodes["c1_td_p6"]["weight_method"] == "sum"
    assert model_cost(spec, g).by_node["c1_td_p7"].params_trainable == (
        1 * 64 + 9 * 64 + 64 * 64 + 64 + 2 * 64)     # one 64-wide channel weight, sep conv, BN


@pytest.mark.parametrize("name", [n.split("/", 1)[1] for n in list_specs()
                                  if n.startswith("topologies/")])
def test_shipped_topology_specs_load_and_build(name):
    spec = load_spec(f"topologies/{name}")
    g = build_ir(spec)
    ir.check(g)
    assert name in {"example_custom"} or compare.paper_key(spec) in (None, *compare.PAPER_TABLE5)


def test_bifpn_spec_at_the_table5_setting_is_exactly_d3():
    assert nx.utils.graphs_equal(build_ir(load_spec("topologies/bifpn")), build_ir(load_spec("d3")))


def test_table5_comparison_reproduces_the_paper():
    """Feature-network ratios to the repeated FPN, against Table 5 (tolerance 0.05). FPN and
    PANet come out equal by construction (12 one-pass cells vs 6 two-pass cells)."""
    specs = [load_spec(f"topologies/{n}") for n in TABLE5]
    rows = compare.compare(specs)
    got_p = [r["ratio"]["fpn_params"] for r in rows]
    got_f = [r["ratio"]["fpn_flops"] for r in rows]
    paper = [compare.PAPER_TABLE5[r["paper_key"]] for r in rows]
    assert [r["paper_key"] for r in rows] == TABLE5
    assert got_p == pytest.approx([p[2] for p in paper], abs=0.05)
    assert got_f == pytest.approx([p[3] for p in paper], abs=0.05)
    # the orderings the paper draws its conclusions from
    assert got_p[2] < got_p[4] < got_p[1] < got_p[3]
    assert got_f[4] < got_f[5] < got_f[2] < got_f[1] < got_f[3]
    assert rows[0]["fpn_params"] == rows[1]["fpn_params"]


def test_compare_paper_ratios_rescale_to_the_first_row():
    specs = [load_spec(f"topologies/{n}") for n in ("bifpn", "nasfpn", "qufpn")]
    rows = compare.compare(specs)
    assert rows[0]["ratio"]["fpn_params"] == 1.0
    assert rows[1]["ratio"]["paper_params"] == pytest.approx(0.71 / 0.88)
    assert rows[2]["paper"] is None and rows[2]["ratio"]["paper_flops"] is None
    text = compare.format_table(rows)
    assert "0.81x" in text and "d3-qufpn" in text


# ------------------------------------------------------------------ TensorFlow


def _tiny(name, extra=()):
    return load_spec(f"topologies/{name}", TINY + list(extra))


@pytest.mark.parametrize("name", ZOO)
def test_topology_builds_runs_and_trains(name):
    """Forward shapes, params equal to the cost model, every feature-network variable gets a
    gradient, and three SGD steps lower a fixed dummy loss."""
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    from edetgraph.nn.model import build_model

    spec = _tiny(name)
    model = build_model(spec)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == \
        model_cost(spec).total.params_trainable
    x = tf.random.stateless_normal([2, 128, 128, 3], [0, 1])   # batch 2: BN on a 1x1 P7 needs it
    shapes = model.output_shapes(batch=2)
    targets = {k: tf.random.stateless_normal(s, [1, i])
               for i, (k, s) in enumerate(sorted(shapes.items()))}
    assert {k: tuple(v.shape) for k, v in model.raw_outputs(x).items()} == shapes

    # The backbone is tested elsewhere; leaving it out of the tape halves the step time.
    train = [v for v in model.trainable_variables if not v.name.startswith(spec.backbone.name)]
    losses = []
    for step in range(3):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(train)
            outs = model.raw_outputs(x, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(v - targets[k])) for k, v in outs.items()])
        grads = tape.gradient(loss, train)
        losses.append(float(loss))
        if step == 0:
            fpn = [(v.name, g) for v, g in zip(train, grads) if v.name.startswith("fpn_cells/")]
            assert fpn and all(g is not None for _, g in fpn)
            dead = [n for n, g in fpn if not np.any(g.numpy())]
            assert not dead, dead
        for v, g in zip(train, grads):
            v.assign_sub(0.02 * g)
    assert losses[2] < losses[1] < losses[0], losses


@pytest.mark.parametrize("name,levels", [("panet", (2, 7)), ("qufpn", (3, 8)), ("fc_fpn", (2, 6))])
def test_other_level_ranges_run_forward(name, levels):
    tf = pytest.importorskip("tensorflow")
    from edetgraph.nn.model import build_model

    lo, hi = levels
    spec = _tiny(name, [f"anchors.min_level={lo}", f"anchors.max_level={hi}",
                        f"image_size={2 ** hi}"])
    model = build_model(spec)
    out = model.raw_outputs(tf.zeros([1, *spec.image_size, 3]))
    assert {k: tuple(v.shape) for k, v in out.items()} == model.output_shapes(1)
    assert sorted(out) == sorted(f"{k}_l{lvl}" for k in ("cls", "box") for lvl in range(lo, hi + 1))
