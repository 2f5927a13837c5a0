"""SavedModel export: reloads without edetgraph and computes what the in-process Detector does."""
import numpy as np
import pytest
from conftest import run_py

from edetgraph.checkpoints.checkpoint import write_released
from edetgraph.graph.spec import load_spec
from edetgraph.nn.model import build_model
from edetgraph.resources import path
from edetgraph.task.detector import Detector
from edetgraph.task.preprocess import read_image
from exporters import to_saved_model

# A small D0 (fewer and narrower layers, levels 3-5): what is checked, that the reloaded
# signatures compute what the Detector does, does not depend on the model's size.
SMALL = ["image_size=128", "backbone.width=0.25", "backbone.depth=0.1", "fpn.channels=16",
         "fpn.repeats=1", "head.repeats=1", "anchors.max_level=5"]
SETS = [x for kv in SMALL for x in ("--set", kv)]

# Runs in a fresh interpreter where importing edetgraph (or exporters) fails outright.
RELOAD = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, *a):
        if name.split(".")[0] in ("edetgraph", "exporters"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np, tensorflow as tf
saved, image_file, out = sys.argv[1:4]
m = tf.saved_model.load(saved)
image = tf.io.decode_image(tf.io.read_file(image_file), channels=3, expand_animations=False)
one = m.signatures["serving_default"](images=image[None])
two = m.signatures["serving_default"](images=tf.stack([image, image[::-1]]))
raw = m.signatures["raw"](images=image[None])
net = m.signatures["network"](input=raw["input"])
res = {**{"one_" + k: v for k, v in one.items()}, **{"two_" + k: v for k, v in two.items()},
       **{"raw_" + k: v for k, v in raw.items()}, **{"net_" + k: v for k, v in net.items()}}
np.savez(out, **{k: v.numpy() for k, v in res.items()})
print(sorted(sys.modules.keys() & {"edetgraph", "exporters"}))
"""


pytestmark = pytest.mark.slow  # exports a model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small D0 with randomised weights, loaded from a released-layout file and exported
    through the CLI (which reloads and checks the folder itself)."""
    tmp = tmp_path_factory.mktemp("sm")
    spec = load_spec("d0", SMALL)
    model = build_model(spec, seed=4)
    rng = np.random.default_rng(4)
    values = {k: v.numpy() + rng.normal(0, 0.1, v.shape).astype(np.float32)
              for k, v in model.variables_by_name().items()}
    values = {k: np.abs(v) + 0.1 if k.endswith("moving_variance") else v for k, v in values.items()}
    write_released(values, tmp / "ck")
    code = to_saved_model.main(["--spec", "d0", *SETS, "--ckpt", str(tmp / "ck"),
                                "--out", str(tmp / "saved"), "--max-dets", "30"])
    assert code == 0
    det = Detector.from_spec(spec, tmp / "ck", max_dets=30)
    r = run_py(RELOAD, str(tmp / "saved"), str(path("street.jpg")), str(tmp / "out.npz"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"  # neither package was imported
    return det, dict(np.load(tmp / "out.npz"))


def _close(got: dict, want: dict, prefix: str, index: int = 0):
    n = int(want["num_detections"][0])
    assert int(got[prefix + "num_detections"][index]) == n
    np.testing.assert_array_equal(got[prefix + "classes"][index], want["classes"][0])
    np.testing.assert_allclose(got[prefix + "boxes"][index], want["boxes"][0], atol=0.01)
    np.testing.assert_allclose(got[prefix + "scores"][index], want["scores"][0], atol=1e-4)


def test_serving_signature_equals_the_detector(exported):
    det, got = exported
    image = read_image(path("street.jpg")).numpy()
    want = det.raw([image])[0]
    assert want["num_detections"][0] > 0
    _close(got, want, "one_")
    _close(got, want, "two_", 0)
    _close(got, det.raw([image[::-1]])[0], "two_", 1)  # a batch entry of its own


def test_raw_and_network_signatures_equal_the_model(exported):
    det, got = exported
    want = det.raw([read_image(path("street.jpg")).numpy()])[0]
    np.testing.assert_array_equal(got["raw_input"], want["input"])
    np.testing.assert_array_equal(got["raw_scale"], want["scale"])
    for key in det.model.output_shapes():
        np.testing.assert_allclose(got["raw_" + key], want[key], atol=1e-5, err_msg=key)
        np.testing.assert_allclose(got["net_" + key], want[key], atol=1e-5, err_msg=key)


def test_export_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    code = to_saved_model.main(["--spec", "d0", *SETS, "--ckpt", str(tmp_path / "none"),
                                "--out", str(tmp_path / "saved")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "none" in err[-1]
    assert not (tmp_path / "saved").exists()



def test_export_refuses_to_replace_a_folder_that_is_not_a_saved_model(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    code = to_saved_model.main(["--spec", "d0", *SETS, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"error: {tmp_path / 'out'}: exists")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
