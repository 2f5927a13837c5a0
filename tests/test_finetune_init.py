"""Fine-tuning initialisation from --ckpt: ``official`` (default) puts a released checkpoint's
raw values in the weights and its ExponentialMovingAverage shadows in the EMA, as the
official trainer's restore does; ``ema`` (edetgraph's earlier behaviour) starts the weights
and the EMA from the shadows. Heads of another shape keep their fresh values either way."""
import numpy as np
import pytest

from edetgraph.checkpoints.checkpoint import write_released
from edetgraph.graph.spec import load_spec
from edetgraph.nn.model import build_model
from edetgraph.training.checkpointing import Checkpointer
from edetgraph.training.config import from_dict
from edetgraph.training.step import build_state
from edetgraph.training.trainer import TrainError, _initialise, train

TINY = ["image_size=64", "backbone.width=0.25", "backbone.depth=0.1", "fpn.channels=8",
        "fpn.repeats=1", "head.repeats=1", "anchors.max_level=5"]
HEAD = "class_net/class-predict/"          # 5 classes in the file, 3 in the model
NO_SHADOW = "efficientnet-b0/stem/conv2d/kernel"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-layout checkpoint of a 5-class model: raw values, shadows = raw + 1 (but
    none for NO_SHADOW)."""
    spec = load_spec("d0", TINY + ["num_classes=5"])
    raw = {k: v.numpy() for k, v in build_model(spec, seed=5).variables_by_name().items()}
    ema = {k: v + 1.0 for k, v in raw.items() if k != NO_SHADOW}
    prefix = write_released(raw, tmp_path_factory.mktemp("released") / "efficientdet-d0",
                            ema=ema, global_step=1000)
    return {"prefix": prefix, "raw": raw, "ema": ema}


def _start(released, tmp_path, init_weights):
    spec = load_spec("d0", TINY + ["num_classes=3"])
    config = from_dict({"batch_size": 2, "steps": 1, "warmup_steps": 0})
    state = build_state(spec, config, 1, 0, seed=0)
    fresh = {k: v.numpy() for k, v in state.variables.items()}
    checkpointer = Checkpointer({"variables": state.variables}, tmp_path, 1, state.step)
    lines = []
    _initialise(released["prefix"], checkpointer, state, lines.append, init_weights)
    weights = {k: v.numpy() for k, v in state.variables.items()}
    shadows = {k: v.numpy() for k, v in state.ema.shadows.items()}
    return fresh, weights, shadows, "\n".join(lines)


def _skipped(fresh, released):
    """The class-predict pointwise kernel and bias: another shape in the file."""
    return {k for k in fresh if released["raw"][k].shape != fresh[k].shape}


def _check_heads_fresh(fresh, weights, shadows, released):
    heads = _skipped(fresh, released)
    assert heads == {HEAD + "pointwise_kernel", HEAD + "bias"}
    for k in heads:               # another shape: skipped, and the EMA starts at the fresh value
        np.testing.assert_array_equal(weights[k], fresh[k])
        np.testing.assert_array_equal(shadows[k], fresh[k])


def test_official_init_raw_weights_and_ema_shadows(released, tmp_path):
    fresh, weights, shadows, log = _start(released, tmp_path, "official")
    loaded = [k for k in fresh if k not in _skipped(fresh, released)]
    assert len(loaded) > 50 and NO_SHADOW in loaded
    for k in loaded:
        np.testing.assert_array_equal(weights[k], released["raw"][k], err_msg=k)
        want = released["ema"].get(k, released["raw"][k])     # no shadow: the raw value
        np.testing.assert_array_equal(shadows[k], want, err_msg=k)
    assert not np.array_equal(shadows["box_net/box-predict/bias"], weights["box_net/box-predict/bias"])
    _check_heads_fresh(fresh, weights, shadows, released)
    assert "raw values" in log and "EMA starts from the checkpoint's ExponentialMovingAverage" in log
    assert "1 without one from their raw values" in log


def test_ema_init_puts_the_shadows_in_the_weights(released, tmp_path):
    fresh, weights, shadows, log = _start(released, tmp_path, "ema")
    for k in fresh:
        if k not in _skipped(fresh, released):
            want = released["ema"].get(k, released["raw"][k])
            np.testing.assert_array_equal(weights[k], want, err_msg=k)
        np.testing.assert_array_equal(shadows[k], weights[k], err_msg=k)
    _check_heads_fresh(fresh, weights, shadows, released)
    assert "EMA shadows" in log and "EMA starts from" not in log


def test_unknown_init_weights_is_one_error_line(tmp_path):
    spec = load_spec("d0", TINY + ["num_classes=3"])
    with pytest.raises(TrainError, match="--init-weights raw: choose one of official, ema"):
        train(spec, from_dict({"steps": 1}), tmp_path, init_weights="raw")


def test_train_help_documents_init_weights(capsys):
    from edetgraph.train import main
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--init-weights {official,ema}" in text and "ExponentialMovingAverage shadows" in text


def test_official_init_without_shadows_starts_the_ema_at_the_raw_values(released, tmp_path):
    bare = {"prefix": write_released(released["raw"], tmp_path / "bare"), "raw": released["raw"]}
    fresh, weights, shadows, log = _start(bare, tmp_path / "run", "official")
    for k in fresh:
        if k not in _skipped(fresh, bare):
            np.testing.assert_array_equal(weights[k], released["raw"][k], err_msg=k)
        np.testing.assert_array_equal(shadows[k], weights[k], err_msg=k)
    assert "EMA starts from the checkpoint's raw values" in log
