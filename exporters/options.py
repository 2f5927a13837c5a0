"""What one export is asked to do: frozen dataclasses the command lines fill and the export
flow (``exporters.pipeline``) reads, and the two ways an export ends without a file.
No TensorFlow here.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class ExportError(Exception):
    """A request the exporter refuses (exit status 2); the message is one line for the user."""


class ExportFailed(ExportError):
    """A conversion or a gate that failed (exit status 1); no file was left behind."""


@dataclass(frozen=True)
class GateOptions:
    """The parity gate: how many random images besides the real ones, runtime threads, and
    the fp32 tolerance (None: the defaults, flat 1e-4 and the float64 factor 2)."""
    random_inputs: int = 2
    threads: int | None = None
    atol: float | None = None
    float64_factor: float | None = None


@dataclass(frozen=True)
class EvalOptions:
    """The optional AP check (``--eval-data``): annotated images and the AP loss allowed."""
    data: str
    annotations: str | None = None      # None: DATA/instances.json
    images: int | None = None           # None: all
    nms: str = "soft"
    max_ap_drop: float | None = None    # None: the bound of the file's kind


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = 17
    quant: str = "fp32"                 # fp32 | fp16 (float I/O) | int8 (static QDQ)
    representative: str | None = None   # int8 calibration images (folder or TFRecord)
    calibration_images: int = 100
    triage: bool = True                 # int8 with --eval-data: keep the fewest nodes float
                                        # that bring the AP loss within the bound


@dataclass(frozen=True)
class TFLiteOptions:
    quant: str = "fp32"                 # fp32 | fp16 | dynamic | int8
    io: str = "float"                   # int8 files: float | int8 | uint8
    representative: str | None = None   # int8 calibration images (folder or TFRecord)
    calibration_images: int = 100
    float_heads: bool = False           # int8 with the class/box heads kept float32
    triage: bool = True                 # int8 with --eval-data: keep the fewest layers float
                                        # that bring the AP loss within the bound


@dataclass(frozen=True)
class ModelCard:
    """What a file says about itself besides its arithmetic: its metadata's name (None: the
    spec's), description (None: written from the spec), version (None: edetgraph's),
    author and licence, and the class names with where they came from."""
    name: str | None = None
    description: str | None = None
    version: str | None = None
    author: str = "edetgraph"
    license: str = "unspecified"
    labels: tuple = ()                  # ((1-based id, name), ...)
    labels_source: str = ""


@dataclass(frozen=True)
class ExportOptions:
    """Everything an export depends on besides the spec and the output path."""
    ckpt: str | None = None             # None: the seeded random weights
    seed: int = 0
    batch: int | None = 1               # None: dynamic (ONNX only)
    input: str = "float"                # float (normalised) | uint8 (pixels, normalised inside)
    postprocess: str = "none"           # none | hard-nms (ONNX) | fast (TFLite)
    max_detections: int = 100
    score_threshold: float = float("-inf")
    iou_threshold: float = 0.5
    gate: GateOptions = field(default_factory=GateOptions)
    eval: EvalOptions | None = None
    verbose: bool = True
    card: ModelCard = field(default_factory=ModelCard)
    ap_measured_by: str | None = None   # who measures the file's AP instead (bench.run with
                                        # --data): then no "accuracy UNVERIFIED" warning


@dataclass(frozen=True)
class OpenVinoOptions:
    quant: str = "int8"                 # int8 (NNCF post-training) | fp32 (the IR as it is)
    representative: str | None = None   # int8 calibration images (folder or TFRecord)
    calibration_images: int = 100
    opset: int = 17                     # of the ONNX file OpenVINO reads
    triage: bool = True                 # int8 with --eval-data: NNCF's accuracy control keeps
                                        # the layers float that the AP bound needs
