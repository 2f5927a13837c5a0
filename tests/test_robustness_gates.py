"""The fp32 detection gate, right both ways with tied scores: a list of detections that the
same NMS gives when tied (saturated) scores are taken in another order passes; a swapped
class, a moved box, a missing or an extra detection still fails. First on candidates made
here (numpy only), then on real exports of a model whose class scores saturate at 1.0
(TFLite with its detection op, ONNX with NonMaxSuppression), and on a file with one class
swapped."""
import numpy as np
import pytest

from edetgraph.verify.parity import ParityGate, tolerance_for
from edetgraph.verify.ties import NmsRule, replay

RULE = NmsRule("fast", iou_threshold=0.5, score_threshold=float("-inf"), max_detections=6,
               image_size=(100, 100))
TOL = (1e-4, 0.1)


def _candidates():
    """Six anchors of three classes: anchors 0-3 saturate at 1.0 (0 and 1 overlap, and
    anchor 2 ties between classes 0 and 1), 4 and 5 score lower and overlap: NMS keeps four
    of the six, which four depends on the order of the ties."""
    boxes = np.array([[0, 0, 40, 40], [2, 2, 42, 42], [50, 50, 90, 90], [0, 60, 30, 95],
                      [60, 0, 95, 30], [61, 1, 96, 31]], np.float64)
    by_class = np.array([[1.0, 0.2, 0.1], [0.3, 1.0, 0.1], [1.0, 1.0, 0.5],
                         [0.2, 0.1, 1.0], [0.7, 0.1, 0.2], [0.1, 0.6, 0.2]])
    return boxes, by_class.max(axis=1), by_class


def _nms(order_key, cls_pick=np.argmax):
    """Greedy NMS over the candidates, ties broken by ``order_key``: a reference list."""
    boxes, scores, by_class = _candidates()
    from edetgraph.verify.detections import iou
    alive, out = np.ones(len(scores), bool), []
    while alive.any() and len(out) < RULE.max_detections:
        idx = [i for i in np.flatnonzero(alive)]
        a = sorted(idx, key=lambda i: (-scores[i], order_key(i)))[0]
        out.append((boxes[a], scores[a], int(cls_pick(by_class[a])) + 1))
        alive &= iou(boxes[a], boxes) <= RULE.iou_threshold
        alive[a] = False
    return _dets(out)


def _dets(rows):
    k = RULE.max_detections
    d = {"boxes": np.zeros((1, k, 4)), "scores": np.zeros((1, k)), "classes": np.zeros((1, k)),
         "num_detections": np.array([len(rows)])}
    for i, (box, score, cls) in enumerate(rows):
        d["boxes"][0, i], d["scores"][0, i], d["classes"][0, i] = box, score, cls
    return d


def _one(d):
    return {k: v[0] for k, v in d.items()}


def test_other_tie_orders_are_accepted_and_wrong_lists_are_not():
    boxes, scores, by_class = _candidates()
    first, last = _nms(lambda i: i), _nms(lambda i: -i)
    assert first["classes"][0].tolist() != last["classes"][0].tolist()   # the orders differ
    other_class = _nms(lambda i: i, cls_pick=lambda row: np.flatnonzero(row == row.max())[-1])
    for d in (first, last, other_class):
        assert replay(boxes, scores, by_class, _one(d), RULE, *TOL) is None
    wrong = {
        "swapped class": lambda d: d["classes"][0].__setitem__(0, d["classes"][0][0] % 3 + 1),
        "moved box": lambda d: d["boxes"][0, 1].__iadd__(5.0),
        "lower score": lambda d: d["scores"][0].__setitem__(0, 0.99),
        "one missing": lambda d: d["num_detections"].__setitem__(0, 3),
        "order broken": lambda d: [d[k][0].__setitem__(slice(2, 4), d[k][0][[3, 2]].copy())
                                   for k in ("boxes", "scores", "classes")],
    }
    assert first["num_detections"][0] == 4
    wrong["one extra"] = lambda d: (d["num_detections"].__setitem__(0, 5),   # anchor 5, which
                                    d["boxes"][0].__setitem__(4, boxes[5]),   # anchor 4
                                    d["scores"][0].__setitem__(4, scores[5]),  # suppressed
                                    d["classes"][0].__setitem__(4, 2))
    for what, change in wrong.items():
        d = {k: v.copy() for k, v in first.items()}
        change(d)
        assert replay(boxes, scores, by_class, _one(d), RULE, *TOL) is not None, what


def test_the_gate_judges_saturated_ties_as_ties():
    cands = tuple(c[None] for c in _candidates())
    first, last = _nms(lambda i: i), _nms(lambda i: -i)
    results = {}
    for name, nms in (("rule", RULE), ("no rule", None)):   # no rule: one to one, as before
        gate = ParityGate(tolerance_for("fp32"), num_classes=3, image_side=100, nms=nms)
        gate.add_detections(["random-0"], first, last, cands)
        results[name] = gate.result()
    assert results["rule"]["passed"], results["rule"]["failures"]
    assert "tied scores are taken in another order" in results["rule"]["detections"][0]["ties"]
    assert not results["no rule"]["passed"]
    swapped = {k: v.copy() for k, v in last.items()}
    (slot,) = np.flatnonzero(swapped["classes"][0] == 3)      # anchor 3: class 3 alone at 1.0
    swapped["classes"][0, slot] = 1
    gate = ParityGate(tolerance_for("fp32"), num_classes=3, image_side=100, nms=RULE)
    gate.add_detections(["random-0"], first, swapped, cands)
    failures = gate.result()["failures"]
    assert len(failures) == 1 and "is not one NMS could pick next" in failures[0]


def test_a_replay_that_cannot_reproduce_tf_arbitrates_nothing():
    boxes, scores, by_class = _candidates()
    first, last = _nms(lambda i: i), _nms(lambda i: -i)
    wrong_rule = NmsRule("fast", 0.99, float("-inf"), 4, (100, 100))   # not TF's threshold
    gate = ParityGate(tolerance_for("fp32"), num_classes=3, image_side=100, nms=wrong_rule)
    gate.add_detections(["random-0"], first, last, (boxes[None], scores[None], by_class[None]))
    failures = gate.result()["failures"]
    assert len(failures) == 1 and "ties not judged" in failures[0]


# ------------------------------------------------------------------ real files (slow)

SMALL = ["image_size=128", "backbone.depth=0.1", "backbone.width=0.25", "fpn.channels=16",
         "fpn.repeats=1", "head.repeats=1", "num_classes=4"]


@pytest.fixture(scope="module")
def saturated(tmp_path_factory):
    """A checkpoint whose class logits span about +-48 (kernels x 8): on random pixels a
    third of the anchor-class scores are exactly 1.0 in float32, as with trained weights."""
    import tensorflow as tf

    from edetgraph.checkpoints.checkpoint import save_checkpoint
    from edetgraph.graph import outputs
    from edetgraph.graph.spec import load_spec
    from edetgraph.task.weights import model_with_weights
    spec = load_spec("d0", SMALL)
    model, _ = model_with_weights(spec, None, seed=0)
    variables = model.variables_by_name()
    for name, v in variables.items():
        if "class-predict" in name and "kernel" in name:
            v.assign(v * 8.0)
    x = tf.random.uniform([1, 128, 128, 3], -2.0, 2.0, seed=1)
    cls = [t for k, t in model.raw_outputs(x).items() if outputs.head_of(k) == "cls"]
    ones = sum(int(tf.reduce_sum(tf.cast(tf.sigmoid(t) == 1.0, tf.int32))) for t in cls)
    assert ones > 100 * 2          # far more tied detections than the 100 kept
    prefix = save_checkpoint(variables, tmp_path_factory.mktemp("sat") / "model")
    return spec, prefix


def _export(spec, ckpt, out, fmt, postprocess, tamper=False):
    """The swapped-class file meets the default gate; the right one the flat 1e-4 alone (no
    float64 run to excuse anything: a stricter gate, and one TF run less)."""
    from exporters.options import ExportOptions, GateOptions
    from exporters.pipeline import export
    gate = GateOptions() if tamper else GateOptions(float64_factor=0)
    opts = ExportOptions(ckpt=ckpt, postprocess=postprocess, verbose=False, gate=gate)
    return export(spec, str(out), fmt, opts)


class _SwappedClasses:
    """The written file as run by the gate, with classes 1 and 2 given each other's id: the
    detections of a file with one swapped class (a label map off by one class). The right
    file's conversion is reused, so the second export converts nothing."""

    def __init__(self, runner):
        self._runner = runner

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, x):
        d = dict(self._runner.run(x))
        c = np.asarray(d["classes"])
        d["classes"] = np.where(c == 1, 2, np.where(c == 2, 1, c)).astype(c.dtype)
        return d


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tflite-fast", "onnx-hard-nms"])
def test_saturated_scores_export_and_a_swapped_class_does_not(saturated, tmp_path, kind,
                                                              monkeypatch):
    from exporters import pipeline
    from exporters.onnx_format import OnnxFormat
    from exporters.options import ExportFailed
    from exporters.tflite_format import TFLiteFormat
    spec, ckpt = saturated
    make, post, suffix = {"tflite-fast": (TFLiteFormat, "fast", ".tflite"),
                          "onnx-hard-nms": (OnnxFormat, "hard-nms", ".onnx")}[kind]
    fmt, converted = make(), []
    real_convert = type(fmt).convert
    fmt.convert = lambda *a: converted.append(real_convert(fmt, *a)) or converted[-1]
    summary = _export(spec, ckpt, tmp_path / f"ok{suffix}", fmt, post)
    dets = summary["parity"]["detections"]
    assert summary["parity"]["passed"] and (tmp_path / f"ok{suffix}").is_file()
    assert any(d["ties"] for d in dets), dets          # ties were there, and judged as ties
    assert all(d["tf_top_score"] == 1.0 for d in dets)
    fmt.convert = lambda *a: converted[0]
    real_runner = pipeline.make_runner
    monkeypatch.setattr(pipeline, "make_runner",
                        lambda *a, **k: _SwappedClasses(real_runner(*a, **k)))
    with pytest.raises(ExportFailed, match="parity gate failed") as e:
        _export(spec, ckpt, tmp_path / f"bad{suffix}", fmt, post, tamper=True)
    assert "class" in str(e.value)
    assert not (tmp_path / f"bad{suffix}").exists()
