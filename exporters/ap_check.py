"""The exporters' optional accuracy check (``--eval-data``): COCO AP of the exported file
against the TF model it was converted from, on the same images, through the same
post-processing.

The parity gate proves that a file carries the TF signal; for quantised files (fp16, int8)
that says little about accuracy, which depends on the weights. With annotated images the
exporter also measures what users care about: how many AP points the file loses. The drop
allowed depends on the kind of file (``AP_DROP``, in AP points = 100 x AP).

Raw-head files go through the project's TF post-processing (soft-NMS by default, as the
official evaluation), identically for TF and the file; files with in-graph NMS are judged
by their own detections against TF's with the same NMS.
"""
from __future__ import annotations

import glob
import json
import os
import time

import numpy as np

from exporters.common import ExportError, prepare_image

# The largest AP loss (points, 0-100) each kind of file may show against the float TF model.
AP_DROP = {"fp32": 0.1, "fp16": 1.0, "dynamic": 3.0, "int8": 3.0}
AP_DROP_WHY = ("AP (IoU 0.50:0.95) of the file may be at most this many points below the TF "
               "model's on --eval-data: fp32 0.1 (ties in NMS only), fp16 1, dynamic and int8 3")


def check_request(args) -> None:
    """Refuse --eval-* arguments that cannot work, before anything slow (and without
    TensorFlow): a missing folder or glob, an unreadable or image-less instances file,
    images it lists that are not in the folder."""
    data, annotations = getattr(args, "eval_data", None), getattr(args, "eval_annotations", None)
    if data is None:
        for flag, value in (("--eval-annotations", annotations),
                            ("--eval-images", getattr(args, "eval_images", None)),
                            ("--max-ap-drop", getattr(args, "max_ap_drop", None))):
            if value is not None:
                raise ExportError(f"{flag} needs --eval-data (the annotated images)")
        return
    if args.eval_images is not None and args.eval_images < 1:
        raise ExportError(f"--eval-images {args.eval_images}: must be at least 1")
    if args.max_ap_drop is not None and not args.max_ap_drop >= 0:
        raise ExportError(f"--max-ap-drop {args.max_ap_drop}: must be >= 0 (AP points)")
    if not os.path.isdir(data) and not glob.glob(data):
        raise ExportError(f"--eval-data {data}: no such folder or TFRecord file")
    args.eval_annotations = annotations_for(data, annotations)
    images = _listed_images(args.eval_annotations)
    if os.path.isdir(data):
        folder = images_folder(data)
        missing = [f for f in images if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise ExportError(f"--eval-data {data}: {len(missing)} image(s) of "
                              f"{args.eval_annotations} are not in {folder}, e.g. {missing[0]}")


def _listed_images(annotations: str) -> list:
    try:
        with open(annotations) as f:
            listed = json.load(f)["images"]
        names = [im["file_name"] for im in listed]
    except OSError as e:
        raise ExportError(f"--eval-annotations {annotations}: cannot read it ({e.strerror})") \
            from None
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"--eval-annotations {annotations}: not a COCO instances file "
                          f"({type(e).__name__}: {e})") from None
    if not names:
        raise ExportError(f"--eval-annotations {annotations}: lists no images")
    return names


def images_folder(data: str) -> str:
    """DATA/images when it exists (the built-in dataset's layout), else DATA."""
    sub = os.path.join(data, "images")
    return sub if os.path.isdir(sub) else data


def annotations_for(data: str, annotations: str | None) -> str:
    """--eval-annotations, else DATA/instances.json (the built-in dataset's layout)."""
    if annotations is not None:
        return annotations
    guess = os.path.join(data, "instances.json")
    if os.path.isdir(data) and os.path.isfile(guess):
        return guess
    raise ExportError(f"--eval-data {data}: give --eval-annotations (the COCO instances file "
                      f"of these images); there is no {guess}")


def add_args(p) -> None:
    p.add_argument("--eval-data", metavar="DIR|TFRECORD",
                   help="annotated images (a folder, or one holding images/, or a TFRecord "
                   "glob): also measure COCO AP of the file and of TF; the export fails when "
                   "the file loses more than --max-ap-drop points")
    p.add_argument("--eval-annotations", metavar="JSON",
                   help="COCO instances file of --eval-data (default DIR/instances.json)")
    p.add_argument("--eval-images", type=int, metavar="N",
                   help="AP on the first N images only (default all)")
    p.add_argument("--max-ap-drop", type=float, metavar="POINTS",
                   help="largest AP loss allowed, in points (default by kind: fp32 0.1, fp16 "
                   "1, dynamic 3, int8 3)")
    p.add_argument("--eval-nms", default="soft", choices=("soft", "hard"),
                   help="post-processing of raw-head files for the AP check (default soft)")


def _images(data: str, annotations: str, limit: int | None):
    """``(image id, uint8 image)`` for the annotated images of a folder or TFRecord."""
    from edetgraph.task.evaluation import load_coco
    from edetgraph.task.preprocess import read_image
    if os.path.isdir(data):
        folder = images_folder(data)
        for im in load_coco(annotations).dataset["images"][:limit]:
            yield int(im["id"]), read_image(os.path.join(folder, im["file_name"])).numpy()
        return
    import tensorflow as tf
    feature = {"image/encoded": tf.io.FixedLenFeature((), tf.string),
               "image/source_id": tf.io.FixedLenFeature((), tf.string)}
    ds = tf.data.TFRecordDataset(sorted(glob.glob(data)))
    for count, record in enumerate(ds):
        if limit is not None and count >= limit:
            return
        ex = tf.io.parse_single_example(record, feature)
        image = tf.io.decode_image(ex["image/encoded"], channels=3, expand_animations=False)
        yield int(ex["image/source_id"].numpy()), image.numpy()


def _batches(data, annotations, spec, input_kind, batch: int, limit):
    """``(ids, x [batch, H, W, 3], scale_to_original [batch])``; the last batch is padded."""
    from edetgraph.task.preprocess import scaled_size
    ids, xs, scales = [], [], []

    def flush():
        fill = batch - len(ids)
        x = np.stack(xs + [np.zeros_like(xs[0])] * fill)
        return ids, x, np.asarray(scales + [1.0] * fill, np.float32)

    for image_id, image in _images(data, annotations, limit):
        ids.append(image_id)
        xs.append(prepare_image(image, spec, input_kind))
        scales.append(1.0 / float(scaled_size(image.shape[0], image.shape[1],
                                              spec.image_size)[0]))
        if len(ids) == batch:
            yield flush()
            ids, xs, scales = [], [], []
    if ids:
        yield flush()


def measure(spec, serve, run_file, data: str, annotations: str, input_kind: str, batch: int,
            kind: str, limit: int | None = None, nms: str = "soft", max_drop: float | None = None,
            say=lambda m: None) -> dict:
    """AP of TF (``serve``) and of the file (``run_file``) on the same images; a dict with
    both, the drop in points, the bound and ``passed``."""
    import tensorflow as tf
    from bench.quality import Detector, coco_ap
    from edetgraph.task.evaluation import to_coco_results
    detector, dets, ids = None, {"tf": [], "file": []}, []
    for batch_ids, x, scales in _batches(data, annotations, spec, input_kind, batch, limit):
        outs = {"tf": {k: v.numpy() for k, v in serve(tf.constant(x)).items()},
                "file": run_file(x)}
        for who, out in outs.items():
            if "num_detections" in out:          # NMS in the graph: boxes in network pixels
                det = {k: np.asarray(v) for k, v in out.items()}
                det["boxes"] = det["boxes"] * scales[:, None, None]
            else:
                if detector is None:
                    detector = Detector(spec, {k: v.shape for k, v in out.items()}, nms)
                det = detector(out, scales)
            dets[who] += to_coco_results(det, batch_ids)
        ids += batch_ids
        if len(ids) % 50 < batch:
            say(f"  AP check: {len(ids)} image(s)")
    if not ids:
        raise ExportError(f"--eval-data {data}: no images to evaluate")
    ref, got = coco_ap(annotations, dets["tf"], ids), coco_ap(annotations, dets["file"], ids)
    bound = AP_DROP[kind] if max_drop is None else max_drop
    drop = 100.0 * (ref["AP"] - got["AP"])
    return {"data": data, "annotations": annotations, "images": len(ids),
            "nms": "in-graph" if detector is None else nms, "tf": ref, "file": got,
            "ap_drop_points": drop, "max_ap_drop_points": bound, "why": AP_DROP_WHY,
            "passed": drop <= bound}


def attach(summary: dict, spec, serve, run_file, kind: str, input_kind: str, batch, data,
           annotations=None, limit=None, nms: str = "soft", max_drop=None, say=lambda m: None):
    """The exporters' step: with ``data``, measure and store the result under
    ``summary["accuracy"]`` (keep_if_passed then refuses a file that failed it)."""
    if not data:
        return
    say("AP check: running the file and TF on the annotated images of " + data)
    t0 = time.perf_counter()
    summary["accuracy"] = measure(spec, serve, run_file, data, annotations_for(data, annotations),
                                  input_kind, batch or 1, kind, limit, nms, max_drop, say)
    summary["timings"]["ap_check_s"] = time.perf_counter() - t0


def format_ap(r: dict) -> str:
    verdict = "ok" if r["passed"] else "FAIL"
    return (f"AP on {r['images']} image(s) of {r['data']} ({r['nms']} NMS): TF {r['tf']['AP']:.4f} "
            f"(AP50 {r['tf']['AP50']:.4f}), file {r['file']['AP']:.4f} "
            f"(AP50 {r['file']['AP50']:.4f}); drop {r['ap_drop_points']:+.2f} points, allowed "
            f"{r['max_ap_drop_points']:g}: {verdict}")
