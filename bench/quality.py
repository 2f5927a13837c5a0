"""The benchmark's parity figures for one backend's row: its raw outputs against TF's on
the same inputs, judged by the exporters' own gate (``edetgraph.verify.parity``) under the
tolerance of the file's numeric kind, and summarised for the table.
"""
from __future__ import annotations

from bench.config import TOLERANCE
from edetgraph.verify.parity import ParityGate, tolerance_for

REFERENCE = {"max_abs": 0.0, "max_rel": 0.0, "tolerance": "ref", "passed": True,
             "why": "TF is the reference every other backend is compared with"}


def raw_parity(backend: str, ref: list, got: list, inputs: list, exact: list | None = None,
               *, num_classes: int) -> dict:
    """Raw outputs of ``backend`` against TF's over ``inputs`` (three lists in step), judged
    by :class:`edetgraph.verify.parity.ParityGate` under the tolerance of the file's kind; ``exact``:
    the same outputs in float64, in step with ``inputs``, for the fp32 kinds.

    max_abs: largest |backend - TF| over every element of every output and input; max_rel:
    per output, its largest difference / its largest |TF|, worst output; worst: the output
    with the largest difference and the inputs of its batch; nrmse: per head (``cls``/``box``,
    levels pooled) RMSE / std(TF); float64: the largest distances of TF and of the backend
    from the float64 result; failures: the gate's first three.
    """
    tol = tolerance_for(TOLERANCE.get(backend, "fp32"))
    gate = ParityGate(tol, num_classes, image_side=0)  # no detections: the side is unused
    for i, ((labels, _, real), r, g) in enumerate(zip(inputs, ref, got)):
        gate.add_outputs(labels, r, g, real, None if exact is None else exact[i])
    result = gate.result()
    outputs = result["outputs"]
    worst = max(outputs, key=lambda n: outputs[n]["max_abs"])
    image = outputs[worst]["where"]["input"]
    wide = [f["float64"] for f in outputs.values() if f["float64"]]
    return {"max_abs": outputs[worst]["max_abs"],
            "max_rel": max(f["max_rel"] for f in outputs.values()),
            "worst": {"output": worst,
                      "inputs": next(list(labels) for labels, _, _ in inputs if image in labels)},
            "nrmse": {h: f["nrmse"] for h, f in result["heads"].items()},
            "tolerance": tol.name,
            "limit": (f"max |diff| <= {tol.atol:g} per output, or within "
                      f"{tol.exact_factor:g} x TF float32's distance from float64"
                      if tol.atol is not None else f"RMSE/std < {tol.nrmse:g} per head"),
            "float64": ({"tf_max_abs": max(w["tf_max_abs"] for w in wide),
                         "file_max_abs": max(w["file_max_abs"] for w in wide)} if wide else None),
            "why": tol.why, "passed": result["passed"], "failures": result["failures"][:3],
            "inputs": [lab for labels, _, _ in inputs for lab in labels]}
