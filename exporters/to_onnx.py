"""Export a detector to ONNX with tf2onnx; the file is kept only if it computes what TF computes.

    python exporters/to_onnx.py --spec d0 --ckpt efficientdet-d0.tar.gz --out d0.onnx
    python exporters/to_onnx.py --spec lite0 --out lite0.onnx --postprocess hard-nms --input uint8

Outputs: raw head maps ``cls_l3..`` ``[B, H, W, A*C]`` logits and ``box_l3..`` ``[B, H, W, A*4]``
(ty, tx, th, tw), or with ``--postprocess hard-nms`` decoding + ONNX NonMaxSuppression in the
graph: ``boxes [B, K, 4]`` (ymin, xmin, ymax, xmax in network-input pixels, clipped to the
input; multiply by your resize factor), ``scores [B, K]``, ``classes [B, K]`` (float, 1-based),
``num_detections [B]`` int32, padding zeroed.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter

if __package__ in (None, ""):  # run as a file from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exporters import ap_check
from exporters.common import (NORMALISED_HELP, ExportError, ExportFailed, OneLineParser,
                              StagedOutput, add_model_args, build_export_model, check_common,
                              file_facts, format_summary, head_lists, keep_if_passed, log,
                              make_serving_fn, parse_batch, run_cli, spec_anchors, versions)

PROG = "to_onnx"
MAX_OPSET = 18      # tf2onnx 1.17 raises "Opset 19 is not supported yet"
MIN_OPSET = 9       # raw heads convert and match from opset 9 (measured 9-18)
NMS_MIN_OPSET = 11  # at opset 10 tf2onnx's NonMaxSuppressionV5 handler fails


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                      epilog="Exit status: 0 written and proven, 1 conversion or parity gate "
                      "failed (nothing written), 2 request refused. Soft-NMS is refused: tf2onnx "
                      "turns TF's soft-NMS into hard NMS without a word. With --eval-data the "
                      "file's COCO AP is also compared with TF's (see --max-ap-drop).")
    add_model_args(p, ".onnx")
    ap_check.add_args(p)
    p.add_argument("--opset", type=int, default=17,
                   help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} ({NMS_MIN_OPSET}+ with hard-nms); "
                   "default 17")
    p.add_argument("--postprocess", default="none", metavar="none|hard-nms",
                   help="none: raw head outputs (default); hard-nms: decode + NonMaxSuppression "
                   "in the graph (class-agnostic over each anchor's best class, as the official)")
    p.add_argument("--batch", default="1", metavar="N|dynamic",
                   help="batch dimension: a number (default 1) or 'dynamic'")
    p.add_argument("--input", default="float", choices=("float", "uint8"), help=NORMALISED_HELP)
    p.add_argument("--atol", type=float, default=None, metavar="X",
                   help="parity gate: every raw output element within X of TF (default 1e-4); "
                   "an output beyond X passes only if the file is no further from the same "
                   "network run in float64 than 2x TF float32 itself (rounding, not error). "
                   "Detections must match one to one (scores within 1e-4, boxes within 1e-3 "
                   "of the image side)")
    return p


def check_request(args):
    """Every refusal that needs no TensorFlow; returns (spec, batch)."""
    if args.postprocess in ("soft-nms", "soft"):
        raise ExportError("--postprocess soft-nms: refused, tf2onnx converts TF's soft-NMS "
                          "into hard NMS silently (other boxes and scores); use hard-nms, or "
                          "export raw heads and run soft-NMS outside the graph")
    if args.postprocess not in ("none", "hard-nms"):
        raise ExportError(f"--postprocess {args.postprocess}: choose none or hard-nms")
    low = NMS_MIN_OPSET if args.postprocess == "hard-nms" else MIN_OPSET
    if not low <= args.opset <= MAX_OPSET:
        what = " with hard-nms" if args.postprocess == "hard-nms" else ""
        raise ExportError(f"--opset {args.opset}: tf2onnx 1.17 converts this model{what} at "
                          f"opsets {low}-{MAX_OPSET} only")
    if args.atol is not None and not args.atol > 0:
        raise ExportError(f"--atol {args.atol}: must be > 0")
    batch = parse_batch(args.batch, allow_dynamic=True)
    return check_common(args, ".onnx"), batch


def foreign_ops(model, opset: int) -> list:
    """``[(node, op_type, domain)]`` not in the ONNX standard at ``opset``, subgraphs included.

    tf2onnx does not raise when an op handler fails: it keeps the TF op in the graph, which
    ONNX Runtime then refuses to load. This finds such leftovers before anything is written.
    """
    import onnx
    bad = []

    def walk(graph):
        for node in graph.node:
            try:
                if node.domain not in ("", "ai.onnx"):
                    raise onnx.defs.SchemaError
                onnx.defs.get_schema(node.op_type, opset, "")
            except onnx.defs.SchemaError:
                bad.append((node.name, node.op_type, node.domain))
            for attr in node.attribute:
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(g)

    walk(model.graph)
    return bad


def op_histogram(model) -> dict:
    """Node counts per op type, subgraphs (Loop bodies) included."""
    counts = Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(g)

    walk(model.graph)
    return dict(counts)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage().strip().splitlines()[0][:300])


def convert(serve, opset: int):
    """tf2onnx ``from_function`` on the static signature, then the leftover-op and checker tests."""
    import onnx
    import tf2onnx
    logger, collect = logging.getLogger("tf2onnx"), _Collect()
    saved = (logger.handlers[:], logger.propagate, logger.level)
    logger.handlers, logger.propagate = [collect], False  # its tracebacks are ours to summarise
    logger.setLevel(logging.ERROR)
    try:
        model, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature,
                                                 opset=opset)
    except Exception as e:  # tf2onnx raises ValueError, KeyError, RuntimeError, ...
        raise ExportFailed(f"tf2onnx failed at opset {opset}: "
                           f"{str(e).splitlines()[0][:300]}") from None
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
    bad = foreign_ops(model, opset)
    if bad:
        hint = f" ({collect.messages[0]})" if collect.messages else ""
        raise ExportFailed(f"tf2onnx left {len(bad)} non-ONNX op(s) in the graph, e.g. node "
                           f"'{bad[0][0]}' ({bad[0][1]}){hint}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # ValidationError, InferenceError
        raise ExportFailed("onnx.checker rejects the converted model: "
                           f"{str(e).splitlines()[0]}") from None
    return model


def export_onnx(spec, out: str, *, ckpt=None, seed: int = 0, opset: int = 17,
                postprocess: str = "none", batch=1, input_kind: str = "float",
                max_detections: int = 100, score_threshold: float = float("-inf"),
                iou_threshold: float = 0.5, random_inputs: int = 2, threads=None,
                atol=None, float64_factor=None, eval_data: str | None = None,
                eval_annotations: str | None = None, eval_images: int | None = None,
                eval_nms: str = "soft",
                max_ap_drop: float | None = None, verbose: bool = True) -> dict:
    """Build, convert, gate, and keep ``out`` only if the gate passes; returns the summary.

    Raises ExportFailed (nothing written) when conversion or the parity gate fails, or, with
    ``eval_data``, when the file loses more AP than its kind allows (exporters.ap_check).
    """
    import onnx
    from bench.runners import RunnerError, make_runner
    from edetgraph.task.postprocess import postprocess as nms
    from exporters.parity import ParityGate, run_gate, tolerance_for
    say = (lambda m: log(PROG, m)) if verbose else (lambda m: None)
    start = time.perf_counter()
    say(f"building {spec.name} ({'random weights, seed %d' % seed if ckpt is None else ckpt})")
    model, weights = build_export_model(spec, ckpt, seed)
    head = None
    if postprocess == "hard-nms":
        anchors = spec_anchors(spec)

        def head(raw):
            cls, box = head_lists(raw, spec)
            return nms(cls, box, anchors, None, spec.image_size, method="hard",
                       score_thresh=score_threshold, iou_thresh=iou_threshold,
                       max_dets=max_detections)
    serve = make_serving_fn(model, spec, batch, input_kind, head)
    say(f"converting with tf2onnx (opset {opset}, batch {batch or 'dynamic'}, "
        f"postprocess {postprocess}, input {input_kind})")
    t0 = time.perf_counter()
    proto = convert(serve, opset)
    convert_s = time.perf_counter() - t0
    with StagedOutput(out) as staged:
        onnx.save(proto, staged.path)
        try:
            runner = make_runner("onnxruntime", staged.path, threads)
        except RunnerError as e:
            raise ExportFailed(str(e).replace(staged.path, out)) from None
        say("parity gate: running the file and TF on the same inputs")
        t0 = time.perf_counter()
        gate = ParityGate(tolerance_for("fp32", atol, float64_factor), spec.num_classes,
                          max(spec.image_size))
        parity = run_gate(gate, serve, runner.run, spec, input_kind, batch, random_inputs,
                          detections=head is not None, model=model)
        summary = {
            "schema": "edetgraph.export/1", "format": "onnx",
            "file": {"path": staged.out, **file_facts(staged.path)},
            "spec": spec.name, "spec_source": spec.source, "weights": weights,
            "options": {"opset": opset, "postprocess": postprocess, "batch": batch or "dynamic",
                        "input": input_kind, "max_detections": max_detections,
                        "score_threshold": score_threshold, "iou_threshold": iou_threshold},
            "inputs": runner.info()["inputs"], "outputs": runner.info()["outputs"],
            "ops": op_histogram(proto), "parity": parity,
            "timings": {"convert_s": convert_s, "parity_s": time.perf_counter() - t0,
                        "total_s": time.perf_counter() - start},
            "versions": versions("tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "onnxruntime")}
        ap_check.attach(summary, spec, serve, runner.run, "fp32", input_kind, batch, eval_data,
                        eval_annotations, eval_images, eval_nms, max_ap_drop, say)
        keep_if_passed(staged, summary, out)
    return summary


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    spec, batch = check_request(args)
    summary = export_onnx(spec, args.out, ckpt=args.ckpt, seed=args.seed, opset=args.opset,
                          postprocess=args.postprocess, batch=batch, input_kind=args.input,
                          max_detections=args.max_detections,
                          score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
                          random_inputs=args.random_inputs, threads=args.threads, atol=args.atol,
                          float64_factor=args.float64_factor,
                          eval_data=args.eval_data, eval_annotations=args.eval_annotations,
                          eval_images=args.eval_images, eval_nms=args.eval_nms,
                          max_ap_drop=args.max_ap_drop)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
