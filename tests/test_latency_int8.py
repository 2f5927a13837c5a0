"""Latency models of int8 backends: a designed graph becomes a full-int8 TFLite file, the
fit command takes the int8 backend (and still refuses the backends it cannot fit), and the
tables that make a backend fittable agree for every one of them."""
import numpy as np
import pytest

from bench import latency_designs
from bench import latency_measure as lm
from bench.config import TABLE
from bench.latency_model import HOST_BACKENDS, build_parser
from edetgraph.verify.runners import tflite_interpreter


def test_a_designed_graph_becomes_a_full_int8_file(tmp_path):
    """Every op between the float input's QUANTIZE and the output's DEQUANTIZE computes in
    int8, and the relu6 after the 1x1 conv runs inside it (FUSES says so)."""
    design = next(d for d in latency_designs.quick_set() if d.name == "pw-a")
    built = latency_designs.build(design, "tflite", lm.FUSES["tflite-int8"])
    path = lm.design_file(built, design, "tflite-int8", str(tmp_path))
    assert path.endswith(".int8.tflite")
    interp = tflite_interpreter(path, no_delegates=True)
    types = {t["index"]: np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    ops = {op["op_name"]: {types[i] for i in op["outputs"]}
           for op in interp._get_ops_details()}
    assert ops == {"QUANTIZE": {np.dtype(np.int8)}, "CONV_2D": {np.dtype(np.int8)},
                   "DEQUANTIZE": {np.dtype(np.float32)}}
    assert [o.key for o in built.ops] == ["pw", "act_fused"]
    assert lm.design_file(built, design, "tflite-int8", str(tmp_path)) == path  # kept


def test_fit_takes_the_int8_backend_and_refuses_the_unfittable():
    args = build_parser().parse_args(["fit", "--backend", "tflite-int8"])
    assert args.backend == "tflite-int8"
    for refused in ("openvino-int8", "onnxruntime-int8", "tflite-int8-fh", "tflite-int8-e2e"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["fit", "--backend", refused])


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_every_fit_backend_has_a_format_fuses_and_a_runtime(backend):
    """A backend fit offers is known to the timing code in every table, its file format is
    the one its bench row exports, and its runtime version can be recorded."""
    assert set(HOST_BACKENDS) == set(lm.FORMATS) == set(lm.FUSES) == set(lm.RUNTIME_DIST)
    b = TABLE[backend]
    assert lm.FORMATS[backend] == b.export
    assert not b.e2e and not b.float_heads
    assert lm.runtime_version(backend) != "unknown"
