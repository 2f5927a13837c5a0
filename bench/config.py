"""What a benchmark run is asked to do: the backends it knows, the options (one dataclass)
and the progress line. No TensorFlow here, so ``bench.run`` refuses a bad request, and
answers ``--help``, before TensorFlow starts.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field

from edetgraph.files import is_real_folder
from edetgraph.verify.ov_runner import cpu_has_bf16

@dataclass(frozen=True)
class Backend:
    """One row kind of the table: what runs the model, from which exported file."""
    name: str
    runner: str                     # edetgraph.verify.runners kind
    export: str | None = None       # the exporter making its file (None: TF in process)
    quant: str | None = None        # the file's quantisation (TFLite / OpenVINO int8)
    kind: str = "fp32"              # parity tolerance and AP bound (edetgraph.verify.parity)
    precision: str | None = None    # OpenVINO inference precision
    float_heads: bool = False       # int8 with the class/box heads kept float32
    e2e: bool = False               # uint8 picture in, in-graph NMS, detections out

    @property
    def suffix(self) -> str | None:
        """File name ending of its export (shared by backends that run the same file)."""
        if self.export is None:
            return None
        e2e = "_e2e" if self.e2e else ""
        if self.export == "onnx":
            return f"{e2e}{'_' + self.quant if self.quant else ''}.onnx"
        if self.export == "openvino":
            return f"{e2e}_ov_{self.quant}.xml"
        if self.export == "mnn":
            return f"{e2e}{'_' + self.quant if self.quant else ''}.mnn"
        if self.export == "ncnn":
            return f"{e2e}.ncnn.param"
        return f"{e2e}_{self.quant}{'fh' if self.float_heads else ''}.tflite"


_TABLE = (
    Backend("tf", "tf"),
    Backend("tf-xla", "tf"),
    Backend("onnxruntime", "onnxruntime", "onnx"),
    Backend("onnxruntime-fp16", "onnxruntime", "onnx", "fp16", "fp16"),
    Backend("onnxruntime-int8", "onnxruntime", "onnx", "int8", "int8"),
    Backend("openvino-fp32", "openvino", "onnx", precision="f32"),
    Backend("openvino-bf16", "openvino", "onnx", kind="bf16", precision="bf16"),
    Backend("openvino-int8", "openvino", "openvino", "int8", "int8", precision="f32"),
    Backend("mnn-fp32", "mnn", "mnn"),
    Backend("mnn-int8", "mnn", "mnn", "int8", "int8"),
    Backend("ncnn-fp32", "ncnn", "ncnn"),
    Backend("tflite-fp32", "tflite", "tflite", "fp32"),
    Backend("tflite-fp16", "tflite", "tflite", "fp16", "fp16"),
    Backend("tflite-int8", "tflite", "tflite", "int8", "int8"),
    Backend("tflite-int8-fh", "tflite", "tflite", "int8", "int8", float_heads=True),
    Backend("tf-e2e", "tf", e2e=True),
    Backend("onnxruntime-e2e", "onnxruntime", "onnx", e2e=True),
    Backend("openvino-bf16-e2e", "openvino", "onnx", kind="bf16", precision="bf16", e2e=True),
    Backend("tflite-fp32-e2e", "tflite", "tflite", "fp32", e2e=True),
    Backend("tflite-int8-e2e", "tflite", "tflite", "int8", "int8", e2e=True),
    Backend("tflite-int8-fh-e2e", "tflite", "tflite", "int8", "int8", float_heads=True,
            e2e=True),
)
TABLE = {b.name: b for b in _TABLE}
BACKENDS = tuple(TABLE)
DEFAULT_BACKENDS = ("tf", "onnxruntime", "tflite-fp32", "tflite-fp16", "tflite-int8")
# backend -> (runner kind, file suffix, quantization): the backends that run a file
FILE_BACKENDS = {b.name: (b.runner, b.suffix, b.quant) for b in _TABLE if b.export}
FLOAT_HEADS = {b.name for b in _TABLE if b.float_heads}
# backend -> the numeric kind whose parity tolerance (edetgraph.verify.parity) judges it
TOLERANCE = {b.name: b.kind for b in _TABLE}
# e2e rows: the in-graph post-processing of each exporter
E2E_NMS = {"onnx": "hard", "tflite": "fast", None: "soft"}


def runtime_missing(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine (a missing runtime), or None."""
    have = lambda module: importlib.util.find_spec(module) is not None  # noqa: E731
    b = TABLE[backend]
    if b.export in ("onnx", "openvino"):
        for module, what in (("tf2onnx", "tf2onnx (to export)"), ("onnx", "onnx (to export)")):
            if not have(module):
                return f"{what} is not installed here"
    if b.runner == "onnxruntime" and not have("onnxruntime"):
        return "onnxruntime is not installed here"
    if b.runner == "mnn" and not have("MNN"):
        return "MNN is not installed here (pip install mnn)"
    if b.runner == "ncnn" and not have("ncnn"):
        return "ncnn is not installed here (pip install ncnn)"
    if b.export == "ncnn" and not have("pnnx"):
        return "pnnx is not installed here (pip install --no-deps pnnx), needed to export NCNN"
    if b.runner == "openvino" and not have("openvino"):
        return "openvino is not installed here (pip install openvino)"
    if b.export == "openvino" and not have("nncf"):
        return "nncf is not installed here (pip install nncf), needed for OpenVINO int8"
    if b.runner == "tflite" and not any(have(m) for m in ("ai_edge_litert", "tflite_runtime",
                                                        "tensorflow")):
        return "no TFLite runtime is installed here (pip install ai-edge-litert)"
    if b.precision == "bf16" and have("openvino"):
        ok, why = cpu_has_bf16()
        if not ok:
            return why
    return None


@dataclass
class BenchConfig:
    """Everything one benchmark run depends on (the CLI's options)."""
    spec: object
    out: str = "bench_out"
    backends: tuple = DEFAULT_BACKENDS
    ckpt: str | None = None
    seed: int = 0
    threads: int = 2
    runs: int = 50
    warmup: int = 10
    batch: int = 1
    data: str | None = None
    annotations: str | None = None
    max_images: int | None = None
    representative: str | None = None
    calibration_images: int = 100
    triage_data: str | None = None          # int8 rows: the exporters' triage on these images
    triage_annotations: str | None = None
    triage_images: int | None = None
    max_ap_drop: float | None = None        # the triage's bound (None: the kind's)
    nms: str = "soft"
    random_inputs: int = 2
    memory: bool = True
    device_results: tuple = ()
    peers: dict = field(default_factory=dict)      # --peer NAME=FILE: foreign models timed
    spec_args: dict = field(default_factory=dict)  # how the spec was named, for the record
    labels: tuple = ()                             # ((1-based id, name), ...) of the model
    labels_source: str = ""                        # where they came from

    def problem(self) -> str | None:
        """The first option that cannot work, as a one-line message (None: all fine)."""
        for name in ("threads", "runs", "batch", "calibration_images", "max_images",
                     "triage_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                return f"--{name.replace('_', '-')} {value}: must be at least 1"
        if self.warmup < 0:
            return f"--warmup {self.warmup}: must be >= 0"
        if "://" in self.out:
            return f"--out {self.out}: the benchmark writes local files only; copy them after"
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            return f"--out {self.out}: is a file, not a folder"
        for name in ("results.json", "results.csv", "results.png"):
            if is_real_folder(os.path.join(self.out, name)):   # the user's: never replaced
                return (f"--out {self.out}: {name} there is a folder; refusing to replace it "
                        "(move it away or choose another --out)")
        if self.annotations and not self.data:
            return "--annotations needs --data (the images it describes)"
        if self.data and not self.annotations:
            return (f"--data {self.data}: give --annotations (the COCO instances file of these "
                    "images); there is no instances.json in it")
        if (self.triage_annotations or self.triage_images or self.max_ap_drop is not None) \
                and not self.triage_data:
            return ("--triage-annotations, --triage-images and --max-ap-drop need --triage-data "
                    "(the annotated images the int8 triage measures AP on)")
        if self.triage_data and not self.triage_annotations:
            return (f"--triage-data {self.triage_data}: give --triage-annotations (the COCO "
                    "instances file of these images); there is no instances.json in it")
        if self.max_ap_drop is not None and not 0 <= self.max_ap_drop <= 100:
            return f"--max-ap-drop {self.max_ap_drop:g}: give AP points, from 0 to 100"
        if not self.backends:
            return "--backends: name at least one backend"
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:   # a typo must not pass as "skipped"
            return (f"--backends: unknown backend {unknown[0]!r} (known: "
                    f"{', '.join(BACKENDS)})")
        if len(set(self.backends)) != len(self.backends):
            return "--backends: a backend is named twice"
        return None


class Progress:
    """One progress line on stderr: rewritten in place on a terminal, else a line per step."""

    def __init__(self, stream=sys.stderr, enabled: bool = True):
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, message: str) -> None:
        if self.enabled:
            self._write(f"[bench] {message}", final=True)

    def rounds(self, done: int, total: int) -> None:
        """Latency rounds: in place on a terminal, else every 10 %."""
        if self.enabled and (self.tty or done == total or done % max(1, total // 10) == 0):
            self._write(f"[bench] latency: round {done}/{total}", final=done == total)

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


