"""Spec loading: official values, typed validation, overrides, clear errors."""
import json
from pathlib import Path

import pytest
import yaml
from conftest import OFFICIAL, SPECS

from edetgraph.graph import scaling
from edetgraph.graph.cost import model_cost
from edetgraph.graph.spec import SpecError, from_dict, list_specs, load_spec

BASE = yaml.safe_load((SPECS / "d0.yaml").read_text())


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_spec_matches_official_hparams(name, official_models):
    spec = load_spec(SPECS / f"{name}.yaml")
    h = official_models[spec.name]["hparams"]
    assert spec.image_size == (h["image_size"], h["image_size"])
    assert spec.backbone.name == h["backbone_name"]
    assert spec.fpn.channels == h["fpn_num_filters"]
    assert spec.fpn.repeats == h["fpn_cell_repeats"]
    assert spec.head.repeats == h["box_class_repeats"]
    assert (spec.min_level, spec.max_level) == (h["min_level"], h["max_level"])
    assert spec.anchors.scale == h["anchor_scale"]
    assert spec.act == h["act_type"]
    assert spec.fpn.weight_method == h["resolved_fpn_weight_method"]
    assert spec.preprocess.mean_rgb == pytest.approx(h["mean_rgb"] if isinstance(h["mean_rgb"], list) else [h["mean_rgb"]] * 3)


def test_registry_lists_every_official_spec():
    names = list_specs()
    for n in ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d7x", "lite0", "lite1", "lite2",
              "lite3", "lite3x", "lite4"]:
        assert n in names


def test_spec_is_frozen():
    spec = load_spec("d0")
    with pytest.raises(Exception):
        spec.fpn.channels = 3


def test_rectangular_image_size():
    spec = from_dict(dict(BASE, image_size=[384, 640]))
    assert spec.image_size == (384, 640)


def test_overrides_apply_before_validation():
    spec = load_spec("d0", ["fpn.channels=96", "image_size=[256, 384]", "anchors.max_level=6"])
    assert spec.fpn.channels == 96 and spec.image_size == (256, 384) and spec.max_level == 6
    with pytest.raises(SpecError, match=r"fpn.channels: must be positive, got -1"):
        load_spec("d0", ["fpn.channels=-1"])


BAD = [
    ({"fpn": dict(BASE["fpn"], chanels=3)}, r"d0.yaml: fpn.chanels: unknown key"),
    ({"fpn": dict(BASE["fpn"], channels=-64)}, r"fpn.channels: must be positive, got -64"),
    ({"fpn": dict(BASE["fpn"], channels="64")}, r"fpn.channels: expected an integer, got '64'"),
    ({"fpn": dict(BASE["fpn"], repeats=0)}, r"fpn.repeats: must be positive"),
    ({"fpn": dict(BASE["fpn"], weight_method="softmax")}, r"fpn.weight_method: 'softmax' not one of"),
    ({"fpn": dict(BASE["fpn"], topology="nope")}, None),   # caught when the IR is built
    ({"anchors": dict(BASE["anchors"], min_level=8)}, r"anchors: need 1 <= min_level <= max_level"),
    ({"image_size": 100}, r"image_size: \[100, 100\] too small for level 7"),
    ({"image_size": [0, 512]}, r"image_size: must be positive"),
    ({"image_size": "big"}, r"image_size: expected a list, got 'big'"),
    ({"num_classes": 0}, r"num_classes: must be positive"),
    ({"act": "gelu"}, r"act: 'gelu' not one of"),
    ({"backbone": {"name": "resnet50"}}, r"backbone: name 'resnet50' is not a known backbone"),
    ({"backbone": {"name": "efficientnet-b0", "blocks": ["r1_k3"]}}, r"block string 'r1_k3'"),
    ({"head": {"repeats": 3, "separable": "yes"}}, r"head.separable: expected true/false"),
    ({"colour": "red"}, r"colour: unknown key"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_spec_names_file_key_and_value(change, message, tmp_path):
    path = tmp_path / "d0.yaml"
    path.write_text(yaml.safe_dump(dict(BASE, **change)))
    if message is None:
        from edetgraph.graph.build import build_ir
        with pytest.raises(SpecError, match=r"fpn.topology: 'nope' is not registered"):
            build_ir(load_spec(path))
        return
    with pytest.raises(SpecError, match=message) as e:
        load_spec(path)
    assert str(path) in str(e.value)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\nimage_size: 512\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_missing_required_key(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("image_size: 512\n")
    with pytest.raises(SpecError, match="name: required key is missing"):
        load_spec(path)


def test_cli_bad_spec_is_one_line(tmp_path):
    from conftest import run_py
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(dict(BASE, fpn=dict(BASE["fpn"], channels=-1))))
    r = run_py("from edetgraph.inspect import main; raise SystemExit(main())", "--spec", str(path))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "fpn.channels: must be positive" in r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------ compound scaling

# Where each official spec departs from the paper's formulas (Table 1 vs eqs. 1-3), written
# out by hand from the paper so that a change to either the specs or the formulas shows up.
EXPECTED_DEPARTURES = {
    "d0": {}, "d1": {}, "d3": {}, "d6": {"fpn.repeats": (8, 9)},
    "d2": {"fpn.channels": (112, 120)},
    "d4": {"fpn.channels": (224, 216)},
    "d5": {"fpn.repeats": (7, 8), "image_size": (1280, 1152)},
    "d7": {"fpn.channels": (384, 520), "fpn.repeats": (8, 10), "image_size": (1536, 1408)},
    "d7x": {"fpn.channels": (384, 520), "fpn.repeats": (8, 10), "image_size": (1536, 1408),
            "backbone": ("efficientnet-b7", "efficientnet-b6")},
    "lite0": {}, "lite1": {}, "lite3": {},
    "lite2": {"fpn.channels": (112, 120)},
    "lite3x": {"fpn.channels": (200, 160), "image_size": (640, 512)},
    "lite4": {"fpn.channels": (224, 216), "image_size": (640, 576)},
}
@pytest.mark.parametrize("name", OFFICIAL)
def test_official_specs_are_scaling_plus_departures(name):
    """Each official file gives phi and family and pins only its departures; it resolves to
    the official values (test_official_spec_matches_official_hparams above; parameter and
    FLOP counts in test_every_spec)."""
    spec = load_spec(name)
    assert spec.scaling is not None
    assert scaling.departures(spec) == EXPECTED_DEPARTURES[name]
    raw = yaml.safe_load(Path(spec.source).read_text())
    pinned = {"image_size": "image_size" in raw, "backbone": "backbone" in raw,
              "fpn.channels": "channels" in raw["fpn"], "fpn.repeats": "repeats" in raw["fpn"],
              "head.repeats": "repeats" in raw["head"]}
    assert {k for k, v in pinned.items() if v} == set(EXPECTED_DEPARTURES[name])


def test_scaling_fills_only_what_the_spec_leaves_out():
    data = dict(BASE, scaling={"phi": 2})
    for key in ("image_size", "backbone"):
        data.pop(key, None)
    data["fpn"] = {k: v for k, v in data["fpn"].items() if k not in ("channels", "repeats")}
    data["head"] = {k: v for k, v in data.get("head", {}).items() if k != "repeats"}
    spec = from_dict(data)
    assert (spec.image_size, spec.fpn.channels, spec.fpn.repeats, spec.head.repeats,
            spec.backbone.name) == ((768, 768), 120, 5, 3, "efficientnet-b2")
    pinned = from_dict(data, overrides=["fpn.channels=112"])
    assert pinned.fpn.channels == 112
    assert scaling.departures(pinned) == {"fpn.channels": (112, 120)}
    lite = from_dict(data, overrides=["scaling.family=lite"])
    assert (lite.image_size[0], lite.backbone.name) == (448, "efficientnet-lite2")


def test_fractional_phi_interpolates_the_backbone():
    s1, s2 = load_spec("d1"), load_spec("d2")
    data = {"name": "half", "num_classes": 90, "scaling": {"phi": 1.5},
            "fpn": {"topology": "bifpn"}, "head": {"separable": True}}
    half = from_dict(data)
    assert half.fpn.channels == scaling.bifpn_width(1.5) == 104
    assert half.fpn.repeats == 5 and half.head.repeats == 3
    c1, c2, ch = (model_cost(s).total for s in (s1, s2, half))
    assert c1.params_trainable < ch.params_trainable < c2.params_trainable
    b1, b2, bh = (s.backbone_config() for s in (s1, s2, half))
    assert b1.width < bh.width < b2.width and b1.depth < bh.depth < b2.depth


@pytest.mark.parametrize("bad,where", [
    ({"phi": -1}, "scaling.phi"), ({"phi": 9}, "scaling.phi"),
    ({"phi": 1, "family": "mobile"}, "scaling.family"), ({"phi": "two"}, "scaling.phi"),
    ({"phi": 5, "family": "lite"}, "scaling.phi")])
def test_bad_scaling_is_named(bad, where):
    data = dict(BASE, scaling=bad)
    with pytest.raises(SpecError, match=where.replace(".", r"\.")):
        from_dict(data)


def test_custom_topology_scales_as_a_family():
    """The topology zoo's custom example declares phi = 0; --set scaling.phi=N gives the
    family member, growing in every scaled dimension and in cost."""
    costs = []
    for phi in (0, 1, 2):
        spec = load_spec("topologies/example_custom", [f"scaling.phi={phi}"])
        assert scaling.departures(spec) == {}
        assert spec.fpn.nodes is not None
        costs.append(model_cost(spec).total)
    assert costs[0].flops < costs[1].flops < costs[2].flops
    assert costs[0].params_trainable < costs[1].params_trainable < costs[2].params_trainable


def test_inspect_shows_resolved_values_and_departures():
    from conftest import run_py
    r = run_py("from edetgraph.inspect import main; raise SystemExit(main())", "--spec", "d5")
    assert r.returncode == 0, r.stderr
    assert "scaling: phi 5 (efficientdet): input 1280, BiFPN 288 channels x 7 cells" in r.stdout
    assert "image_size 1280 (formula 1152); fpn.repeats 7 (formula 8)" in r.stdout
    r = run_py("from edetgraph.inspect import main; raise SystemExit(main())",
               "--spec", "d5", "--json")
    got = json.loads(r.stdout)["scaling"]
    assert got["departures"]["fpn.repeats"] == {"spec": 7, "formula": 8}


def test_formulas():
    assert [scaling.bifpn_width(p) for p in range(7)] == [64, 88, 120, 160, 216, 288, 384]
    assert [scaling.bifpn_depth(p) for p in range(8)] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert [scaling.head_depth(p) for p in range(8)] == [3, 3, 3, 4, 4, 4, 5, 5]
    assert [scaling.resolution(p) for p in range(8)] == [512 + 128 * p for p in range(8)]
