"""Every number a spec or a training-settings file takes is finite: NaN passes every range
check written as a comparison (``nan <= 0`` is false) and ends as boxes of NaN, so each
float field of every spec and settings dataclass refuses NaN and +-inf, naming the key.
The fields are found by walking the dataclasses, so a new field is covered for free."""
import dataclasses
import math
import typing

import pytest
import yaml

from edetgraph.graph import spec as spec_mod
from edetgraph.graph.spec import SPEC_DIR, ModelSpec, SpecError
from edetgraph.training import config as config_mod
from edetgraph.training.config import TRAIN_DIR, TrainConfig, TrainConfigError


def _float_paths(cls, prefix=""):
    """Dotted paths of the float fields (optional ones included) under a dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp
        if inner is float:
            yield prefix + f.name
        elif dataclasses.is_dataclass(inner):
            yield from _float_paths(inner, f"{prefix}{f.name}.")


def _set(data: dict, path: str, value) -> dict:
    node = data
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return data


SPEC_FLOATS = sorted(_float_paths(ModelSpec))
TRAIN_FLOATS = sorted(_float_paths(TrainConfig))


def test_the_walk_finds_the_float_fields():
    assert "anchors.scale" in SPEC_FLOATS and "learning_rate" in TRAIN_FLOATS
    assert "synthetic.val_fraction" in TRAIN_FLOATS


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", SPEC_FLOATS)
def test_a_spec_refuses_a_non_finite_number_naming_the_key(path, bad):
    data = yaml.safe_load((SPEC_DIR / "demo.yaml").read_text())
    with pytest.raises(SpecError, match=rf"{path.split('.')[-1]}: expected a finite number"):
        spec_mod.from_dict(_set(data, path, bad), source="demo.yaml")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", TRAIN_FLOATS)
def test_a_training_setting_refuses_a_non_finite_number_naming_the_key(path, bad):
    data = yaml.safe_load((TRAIN_DIR / "demo.yaml").read_text())
    with pytest.raises(TrainConfigError, match=rf"{path}: expected a finite number"):
        config_mod.from_dict(_set(data, path, bad), source="demo.yaml")


def test_yaml_spellings_and_overrides_of_nan_are_refused_too(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("steps: 3\nlearning_rate: .NaN\n")
    with pytest.raises(TrainConfigError, match="learning_rate"):
        config_mod.load_train_config(f)
    for value in ("nan", ".nan", ".inf", "-.inf", "1e400"):
        with pytest.raises(SpecError, match="anchors.scale"):
            spec_mod.load_spec("demo", [f"anchors.scale={value}"])


def test_finite_values_still_load():
    assert spec_mod.load_spec("demo", ["anchors.scale=3.5"]).anchors.scale == 3.5
    assert config_mod.load_train_config("demo", ["learning_rate=0.5"]).learning_rate == 0.5
