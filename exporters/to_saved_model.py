"""Export a detector as a TensorFlow SavedModel that needs no edetgraph to run.

    python exporters/to_saved_model.py --spec d0 --ckpt efficientdet-d0.tar.gz --out d0_saved/

Signatures (all take a batch; every image of one call shares one size, any size, resized
inside as the official model does; the content keeps its aspect ratio):

- ``serving_default``: ``images`` uint8 ``[B, H, W, 3]`` RGB -> ``boxes`` ``[B, K, 4]``
  (ymin, xmin, ymax, xmax in original pixels), ``scores`` ``[B, K]``, ``classes`` ``[B, K]``
  (float32, 1-based COCO-style ids), ``num_detections`` ``[B]`` int32; K = ``--max-dets``,
  padding zeroed. NMS as ``--nms`` (default soft, the official).
- ``raw``: same input -> ``input`` (the network input ``[B, S, S, 3]``), ``scale`` ``[B]``
  (multiply network-frame boxes by it) and the head outputs ``cls_l3`` ... ``box_l7`` (NHWC).
- ``network``: ``input`` float32 ``[B, S, S, 3]`` (already pre-processed) -> ``cls_l*``/``box_l*``.

``B`` is free unless ``--batch-size`` fixes it (a fixed batch runs NMS in an unrolled loop
instead of ``tf.map_fn``, slightly faster). Reload with ``tf.saved_model.load(DIR)`` and call
``.signatures["serving_default"](images=...)``. The SavedModel is written to a staging folder
beside DIR, reloaded, its ``network`` signature passes the fp32 parity gate and its
detections on street.jpg are compared with the in-process detector's; only then does it
replace DIR (an existing DIR must be empty or a SavedModel), with the summary in DIR.json.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a checkout: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edetgraph.checkpoints.archive import CheckpointError, resolve_checkpoint  # noqa: E402
from edetgraph.cli import quiet_tensorflow  # noqa: E402
from edetgraph.graph.spec import SpecError, load_spec  # noqa: E402
from exporters.options import ExportError, ExportFailed, ExportOptions  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="exporters/to_saved_model.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="spec file or built-in name (d0, lite0, ...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="spec override, e.g. image_size=640 (repeatable)")
    ap.add_argument("--ckpt", help="released .tar.gz, checkpoint folder or prefix "
                                   "(omit: random weights, for testing the export only)")
    ap.add_argument("--ckpt-mode", default="strict", choices=("strict", "finetune", "lenient"))
    ap.add_argument("--out", required=True, metavar="DIR", help="SavedModel folder to write")
    ap.add_argument("--nms", default="soft", choices=("soft", "hard", "fast"))
    ap.add_argument("--score-thresh", type=float, default=None, metavar="T",
                    help="default: 0.001 for soft, none for hard/fast (the official)")
    ap.add_argument("--max-dets", type=int, default=100, metavar="N")
    ap.add_argument("--batch-size", type=int, default=None, metavar="B",
                    help="fix the batch size (default: any)")
    return ap


def check_request(args):
    """Every refusal that needs no TensorFlow; returns the spec."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                               and not (out / "saved_model.pb").is_file())):
        raise ExportError(f"{out}: exists and is not a SavedModel folder; refusing to replace it")
    if args.max_dets < 1:
        raise ExportError(f"--max-dets {args.max_dets}: must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise ExportError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.ckpt is not None:
        resolve_checkpoint(args.ckpt)
    return load_spec(args.spec, args.set)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = check_request(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        if args.ckpt is None:
            print("WARNING: no --ckpt given: exporting RANDOM weights", file=sys.stderr)
        quiet_tensorflow()
        from exporters import pipeline, saved_model_format  # deferred: TensorFlow starts now
        fmt = saved_model_format.SavedModelFormat(args.nms, args.score_thresh, args.max_dets,
                                                  args.ckpt_mode)
        summary = pipeline.export(spec, args.out, fmt, ExportOptions(
            ckpt=args.ckpt, batch=args.batch_size, verbose=False))
    except ExportFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ExportError, SpecError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if fmt.load_report is not None:
        print(fmt.load_report.summary(), file=sys.stderr)
    print(f"reloaded and ran it on street.jpg: {summary['check']['street.jpg']}",
          file=sys.stderr)
    print(f"wrote {args.out} (signatures: {', '.join(saved_model_format.SIGNATURES)}); "
          f"summary {os.path.abspath(args.out)}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
