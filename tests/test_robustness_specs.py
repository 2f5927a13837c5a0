"""Hostile specs: YAML alias bombs, oversized files, and valid specs whose model would
exhaust the machine are refused in a fraction of a second, with one line that says which
limit and how to raise it; every shipped spec stays within the limits. No TensorFlow."""
import time

import pytest
from conftest import ROOT, run_py

from edetgraph.graph.budget import check_budget
from edetgraph.graph.build import build_ir
from edetgraph.graph.spec import SpecError, list_specs, load_spec
from edetgraph.limits import LIMITS, limit, short


def alias_bomb(levels: int = 9) -> str:
    """A list whose repr would be 9**levels strings, in under 400 bytes of YAML."""
    lines = ['  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for k in "bcdefghijklmnop"[:levels - 1]:
        lines.append(f"  - &{k} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = k
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("field", ["image_size", "name", "aspect_ratios"])
@pytest.mark.serial   # a wall-clock bound: runs alone (scripts/test)
def test_an_alias_bomb_is_refused_at_once(field, tmp_path, monkeypatch):
    head = {"image_size": "name: x\nimage_size:\n", "name": "image_size: 64\nname:\n",
            "aspect_ratios": "name: x\nimage_size: 512\nanchors:\n aspect_ratios:\n"}[field]
    path = tmp_path / "bomb.yaml"
    path.write_text(head + alias_bomb())
    assert path.stat().st_size < 500
    start = time.perf_counter()
    with pytest.raises(SpecError, match="more than 100,000 values once YAML aliases are "
                                        "expanded .*EDETGRAPH_MAX_YAML_NODES"):
        load_spec(path)
    # Past the alias limit, the value in the error is still cut short: the message stays
    # small and quick (before the fix: 95 s, 15 GB, then a line of gigabytes).
    monkeypatch.setenv("EDETGRAPH_MAX_YAML_NODES", "1e12")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert len(str(e.value)) < 400 and "lol" in str(e.value)
    assert time.perf_counter() - start < 5


def test_an_alias_bomb_through_set_is_refused():
    value = "[" + alias_bomb().replace("\n  - ", ", ").replace("  - ", "", 1).rstrip() + "]"
    with pytest.raises(SpecError, match="--set name: more than 100,000 values"):
        load_spec("d0", [f"name={value}"])


def test_a_recursive_alias_and_deep_nesting_are_refused(tmp_path):
    (tmp_path / "loop.yaml").write_text("name: &a [*a]\nimage_size: 64\n")
    (tmp_path / "deep.yaml").write_text("name: " + "[" * 50_000 + "\n")
    for name in ("loop.yaml", "deep.yaml"):
        with pytest.raises(SpecError, match="nested too deeply|not valid YAML"):
            load_spec(tmp_path / name)


def test_spec_file_size_is_capped_and_the_cap_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    path.write_text((ROOT / "specs" / "d0.yaml").read_text() + "#" * 2000 + "\n")
    monkeypatch.setenv("EDETGRAPH_MAX_SPEC_BYTES", "1000")
    with pytest.raises(SpecError, match=r"bytes, more than the 1,000 .*EDETGRAPH_MAX_SPEC_BYTES"):
        load_spec(path)
    monkeypatch.setenv("EDETGRAPH_MAX_SPEC_BYTES", "1e4")
    assert load_spec(path).name == "efficientdet-d0"


@pytest.mark.parametrize("override, message", [
    ("fpn.channels=10000000", r"3e\+15 parameters, more than the 2e\+09 allowed "
                              r"\(set EDETGRAPH_MAX_PARAMS"),
    ("num_classes=100000000", r"parameters, more than .*EDETGRAPH_MAX_PARAMS"),
    ("image_size=100000", r"TB of activations per 100000x100000 image, more than the 64.0 GB"
                          r" allowed \(set EDETGRAPH_MAX_ACTIVATION_BYTES"),
    ("fpn.repeats=10000", r"fpn.repeats: 10,000 cells of 8 nodes make 80,000 fusion nodes, "
                          r"more than 5,000 \(set EDETGRAPH_MAX_GRAPH_NODES"),
    ("head.repeats=100000000", r"head.repeats: 100,000,000 is more than 5,000"),
    ("backbone.depth=1e9", r"backbone: 16,000,000,000 blocks"),
])
@pytest.mark.serial   # a wall-clock bound: runs alone (scripts/test)
def test_a_model_past_the_limits_is_refused_before_anything_is_built(override, message):
    start = time.perf_counter()
    with pytest.raises(SpecError, match=message):
        spec = load_spec("d0", [override])
        check_budget(spec, build_ir(spec))
    assert time.perf_counter() - start < 2


def test_the_limits_can_be_raised(monkeypatch):
    spec = load_spec("d0", ["fpn.repeats=20"])        # 160 fusion nodes
    monkeypatch.setenv("EDETGRAPH_MAX_GRAPH_NODES", "100")
    with pytest.raises(SpecError, match="160 fusion nodes, more than 100"):
        build_ir(spec)
    monkeypatch.setenv("EDETGRAPH_MAX_GRAPH_NODES", "200")
    assert build_ir(spec).number_of_nodes() > 160
    wide = load_spec("d0", ["fpn.channels=20000"])
    with pytest.raises(SpecError, match="parameters"):
        check_budget(wide)
    monkeypatch.setenv("EDETGRAPH_MAX_PARAMS", "1e12")
    assert check_budget(wide).params_total > 2e9


def test_a_bad_limit_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("EDETGRAPH_MAX_PARAMS", "lots")
    with pytest.raises(ValueError, match="EDETGRAPH_MAX_PARAMS='lots': expected a number"):
        limit("params")
    monkeypatch.setenv("EDETGRAPH_MAX_PARAMS", "-1")
    with pytest.raises(ValueError, match="must be positive"):
        limit("params")


@pytest.mark.parametrize("name", list_specs())
def test_every_shipped_spec_is_within_the_limits(name):
    spec = load_spec(name)
    total = check_budget(spec, build_ir(spec))
    assert total.params_total < limit("params") / 10
    assert total.activation_bytes < limit("activation_bytes") / 4


def test_every_limit_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [lim.env for lim in LIMITS.values() if lim.env not in readme]
    assert missing == []


@pytest.mark.serial   # a wall-clock bound: runs alone (scripts/test)
def test_short_never_builds_a_whole_repr():
    big = ["x" * 10] * 10
    for _ in range(8):
        big = [big] * 10          # 10**9 strings, shared
    start = time.perf_counter()
    text = short(big)
    assert len(text) <= 120 and time.perf_counter() - start < 0.1
    assert short("y" * 10_000_000, 20) == "'" + "y" * 16 + "..."


def test_inspect_refuses_a_huge_model_in_one_line():
    r = run_py("import sys; from edetgraph.inspect import main; sys.exit(main(sys.argv[1:]))",
               "--spec", "d0", "--set", "fpn.channels=10000000", "--verify")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "EDETGRAPH_MAX_PARAMS" in r.stderr


@pytest.mark.parametrize("command", ["train", "infer", "to_onnx"])
def test_every_command_refuses_a_huge_model_before_tensorflow(command, tmp_path):
    """With TensorFlow made unimportable: a refusal that needed it would crash instead."""
    block = ("import sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):\n"
             "            raise ImportError('tensorflow is blocked in this test')\n"
             "sys.meta_path.insert(0, Block())\n")
    main = {"train": "from edetgraph.train import main",
            "infer": "from edetgraph.infer import main",
            "to_onnx": "sys.path.insert(0, 'exporters'); import to_onnx\n"
                       "main = lambda argv: to_onnx.run_cli(to_onnx.PROG, to_onnx.main, argv)"}[command]
    args = {"train": ["--model-dir", str(tmp_path / "run")],
            "infer": ["--image", str(ROOT / "edetgraph" / "resources" / "street.jpg"),
                      "--out", str(tmp_path / "out")],
            "to_onnx": ["--out", str(tmp_path / "x.onnx")]}[command]
    r = run_py(block + main + "\nsys.exit(main(sys.argv[1:]))", "--spec", "d0",
               "--set", "fpn.channels=10000000", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "EDETGRAPH_MAX_PARAMS" in r.stderr
    assert list(tmp_path.iterdir()) == []
