"""An exported file used as a detector, from what its metadata says: what
``python -m edetgraph.infer --model FILE`` runs, so a user can check a ``.tflite`` or
``.onnx`` file on their own pictures before shipping it.

The picture is prepared as the file's metadata says (``edetgraph.task.preprocess``: float
files get the official pre-processing, uint8 files the letterboxed pixels), the file runs
on its runtime (LiteRT, ONNX Runtime), and its outputs become the detections
``edetgraph.infer`` writes: in-graph NMS as the file gives it (boxes back to original
pixels), raw head outputs through the same post-processing the TF path uses.
"""
from __future__ import annotations

import numpy as np
import yaml

from edetgraph.graph.spec import from_dict
from edetgraph.task.preprocess import prepare_image, scaled_size
from edetgraph.verify.accuracy import Postprocessor
from edetgraph.verify.detections import in_pixels
from edetgraph.verify.file_metadata import MetadataError, labels_of, read_metadata
from edetgraph.verify.graph_facts import check_claims, check_graph
from edetgraph.verify.runners import kind_for_path, make_runner

KEYS = ("boxes", "scores", "classes", "num_detections")


class DeployedDetector:
    """``raw([image])`` like :meth:`edetgraph.task.detector.Detector.raw`, from a file.

    ``labels`` None: the names the file carries; ``method`` the post-processing of raw-head
    files (soft, hard or fast; files with NMS in the graph keep theirs).
    """

    def __init__(self, path, threads=None, labels=None, method: str = "soft",
                 max_dets: int = 100, score_thresh: float | None = None):
        self.path, self.meta = str(path), read_metadata(path)
        facts = self.meta["facts"]
        try:
            self.spec = from_dict(yaml.safe_load(facts.get("spec") or ""),
                                  f"{path} (its metadata)")
        except (ValueError, yaml.YAMLError) as e:
            raise MetadataError(f"{path}: the spec in its metadata is unusable: "
                                f"{str(e).splitlines()[0]}") from None
        check_claims(path, facts, self.spec)       # bounded before anything is allocated
        self.kind = facts["input"]["kind"]
        self.outputs = facts["outputs"]
        self.labels = dict(labels) if labels is not None else labels_of(self.meta)
        self.in_graph = self.outputs["kind"] == "detections"
        self.method = f"in-graph {self.outputs['nms']}" if self.in_graph else method
        self.max_dets, self.score_thresh = max_dets, score_thresh
        self.runner = make_runner(kind_for_path(path), path, threads)
        check_graph(path, facts, self.spec, self.runner)   # the graph is the truth
        self.load_report = None
        self._post = None
        h, w = self.spec.image_size
        self._box_scale = (np.asarray([h, w, h, w], np.float32)
                           if self.outputs.get("boxes") == "ratio" else None)

    def _detections(self, out: dict, scale: np.ndarray) -> dict:
        if self.in_graph:
            det = in_pixels({k: np.asarray(out[k]) for k in KEYS}, self._box_scale)
            det["num_detections"] = np.asarray(det["num_detections"]).astype(np.int32)
            det["boxes"] = det["boxes"] * scale[:, None, None]
            return det
        if self._post is None:
            self._post = Postprocessor(self.spec, {k: v.shape for k, v in out.items()},
                                       self.method, self.max_dets)
        return self._post(out, scale)

    def raw(self, images) -> list[dict]:
        """Per picture (uint8 ``[H, W, 3]``): ``input``, ``scale`` and the detections in
        original-image pixels (``boxes, scores, classes, num_detections``), batch axis kept;
        raw-head files also give their head outputs."""
        res = []
        for image in images:
            image = np.asarray(image)
            x = prepare_image(image, self.spec, self.kind)[None]
            factor, _, _ = scaled_size(image.shape[0], image.shape[1], self.spec.image_size)
            scale = np.asarray([np.float32(1) / np.float32(factor)], np.float32)  # as TF's
            out = {k: np.asarray(v) for k, v in self.runner.run(x).items()}
            det = self._detections(out, scale)
            res.append({"input": x, "scale": scale,
                        **({} if self.in_graph else out), **det})
        return res
