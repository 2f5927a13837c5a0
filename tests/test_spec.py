"""Spec loading: official values, typed validation, overrides, clear errors."""
import pytest
import yaml
from conftest import OFFICIAL, SPECS

from edetgraph.graph import scaling
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
    "d0": {}, "d1": {}, "d3": {}, "d6": {},
    "d2": {"fpn_channels": (112, 120)},
    "d4": {"fpn_channels": (224, 216)},
    "d5": {"fpn_repeats": (7, 8), "image_size": (1280, 1152)},
    "d6": {"fpn_repeats": (8, 9), "head_repeats": (5, 5)},
    "d7": {"fpn_channels": (384, 520), "fpn_repeats": (8, 10), "image_size": (1536, 1408)},
}


@pytest.mark.parametrize("name,phi", [(f"d{i}", i) for i in range(8)])
def test_departures_from_the_compound_scaling_formulas(name, phi):
    spec = load_spec(name)
    got = scaling.departures(spec, phi)
    want = {k: v for k, v in EXPECTED_DEPARTURES[name].items() if v[0] != v[1]}
    assert got == want


def test_formulas():
    assert [scaling.bifpn_width(p) for p in range(7)] == [64, 88, 120, 160, 216, 288, 384]
    assert [scaling.bifpn_depth(p) for p in range(8)] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert [scaling.head_depth(p) for p in range(8)] == [3, 3, 3, 4, 4, 4, 5, 5]
    assert [scaling.resolution(p) for p in range(8)] == [512 + 128 * p for p in range(8)]
