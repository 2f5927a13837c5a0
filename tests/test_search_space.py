"""The search space (no TensorFlow): candidates are ordinary specs, the base's BiFPN is one of
them, mutation changes one gene, bad space files are named; the report's arithmetic."""
import random

import pytest
import yaml

from edetgraph.graph import scaling
from edetgraph.graph import search_space as S
from edetgraph.graph.build import build_ir
from edetgraph.graph.cost import model_cost
from edetgraph.graph.spec import from_dict, load_spec
from edetgraph.nas.report import family_comparison, interpolate, pareto
from edetgraph.resources import path

DEFAULT = path("search/bifpn_space.yaml")


@pytest.fixture(scope="module")
def space():
    return S.load_space(DEFAULT)


def test_the_base_bifpn_is_a_candidate(space):
    """The skeleton with BiFPN's edges and the base's settings is the base model itself."""
    spec = from_dict(S.bifpn_candidate(space).spec_data(space))
    demo = load_spec("demo")
    assert model_cost(spec).total.flops == model_cost(demo).total.flops
    assert model_cost(spec).total.params_total == model_cost(demo).total.params_total
    assert build_ir(spec).number_of_nodes() == build_ir(demo).number_of_nodes()


def test_samples_are_valid_specs_and_differ(space):
    rng = random.Random(0)
    cands = [S.sample(space, rng) for _ in range(60)]
    assert len({c.key for c in cands}) == 60
    for c in cands[:20]:
        data = c.spec_data(space)
        spec = from_dict(yaml.safe_load(yaml.safe_dump(data)))   # survives a YAML file
        build_ir(spec)
        assert spec.image_size[0] in space.image_size and spec.fpn.channels in space.channels
        assert S.Candidate.from_dict(c.as_dict()) == c
    # every required (pyramid) edge is present in every node's inputs
    for node in c.spec_data(space)["fpn"]["nodes"]:
        required = dict((n, r) for n, _, r, _ in space.skeleton())[node["name"]]
        assert set(required) <= set(node["inputs"])


def test_mutation_changes_one_gene(space):
    rng = random.Random(1)
    parent = S.bifpn_candidate(space)
    for _ in range(40):
        child = S.mutate(space, parent, rng)
        a, b = parent.as_dict(), child.as_dict()
        changed = [k for k in a if a[k] != b[k]]
        assert len(changed) <= 1
        if changed == ["edges"]:
            diff = sum(len(set(a["edges"][n]) ^ set(b["edges"][n])) for n in a["edges"])
            assert diff == 1
        elif changed == ["fusion"]:
            assert sum(a["fusion"][n] != b["fusion"][n] for n in a["fusion"]) == 1


def test_family_is_the_base_compound_scaled(space):
    f0, f1 = (from_dict(S.family_member(space, phi)) for phi in (0, 1))
    assert model_cost(f0).total.flops == model_cost(load_spec("demo")).total.flops
    assert f1.fpn.channels == 56 and f1.fpn.repeats == 3 and f1.image_size == (320, 320)
    assert f1.backbone_config().depth > f0.backbone_config().depth
    assert scaling.relative({"image_size": 512, "fpn": {"channels": 64, "repeats": 3},
                             "head": {"repeats": 3},
                             "backbone": {"name": "efficientnet-b0"}}, 2)["fpn"] == \
        {"channels": scaling.bifpn_width(2), "repeats": 5}


@pytest.mark.parametrize("text,where", [
    ("base: no-such-spec\n", "base:"),
    ("base: demo\nchannels: [30]\n", "channels: 30 is not a multiple of 8"),
    ("base: demo\nfusion: [magic]\n", "fusion: 'magic'"),
    ("base: demo\nrepeats: []\n", "repeats: needs at least one value"),
    ("base: demo\nwidth: [1]\n", "width: unknown key"),
    ("base: demo\nedge_probability: 2\n", "edge_probability"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_bad_space_files_are_named(tmp_path, text, where):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    with pytest.raises(S.SpaceError) as e:
        S.load_space(p)
    assert str(p) in str(e.value) and where in str(e.value)


def test_pareto_and_interpolation():
    pts = [(10, 0.5), (12, 0.4), (8, 0.45), (20, 0.6), (20, 0.55)]
    assert pareto(pts) == [True, False, True, True, False]
    assert interpolate([10, 20], [0.4, 0.6], 15) == pytest.approx(0.5)
    assert interpolate([10, 20], [0.4, 0.6], 25) is None
    family = [{"measured_ms": 10, "AP": 0.40}, {"measured_ms": 20, "AP": 0.60}]
    got = family_comparison({"measured_ms": 15, "AP": 0.55}, family)
    assert got["family_AP_at_same_ms"] == pytest.approx(0.5)
    assert got["AP_gain"] == pytest.approx(0.05)
    assert got["family_ms_at_same_AP"] == pytest.approx(17.5)
    assert got["speedup"] == pytest.approx(17.5 / 15, abs=1e-3)
    worse = family_comparison({"measured_ms": 15, "AP": 0.45}, family)
    assert worse["AP_gain"] < 0 and worse["speedup"] < 1
