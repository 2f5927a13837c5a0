"""What a benchmark run is asked to do: the backends it knows, the options (one dataclass)
and the progress line. No TensorFlow here, so ``bench.run`` refuses a bad request, and
answers ``--help``, before TensorFlow starts.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field

BACKENDS = ("tf", "tf-xla", "onnxruntime", "tflite-fp32", "tflite-fp16", "tflite-int8",
            "tflite-int8-fh")
DEFAULT_BACKENDS = ("tf", "onnxruntime", "tflite-fp32", "tflite-fp16", "tflite-int8")
# backend -> (runner kind, file suffix, TFLite quantization)
FILE_BACKENDS = {"onnxruntime": ("onnxruntime", ".onnx", None),
                 "tflite-fp32": ("tflite", "_fp32.tflite", "fp32"),
                 "tflite-fp16": ("tflite", "_fp16.tflite", "fp16"),
                 "tflite-int8": ("tflite", "_int8.tflite", "int8"),
                 "tflite-int8-fh": ("tflite", "_int8fh.tflite", "int8")}
FLOAT_HEADS = {"tflite-int8-fh"}  # int8 with the class/box heads kept float32
# backend -> the numeric kind whose parity tolerance (edetgraph.verify.parity) judges it
TOLERANCE = {"tf": "fp32", "tf-xla": "fp32", "onnxruntime": "fp32", "tflite-fp32": "fp32",
             "tflite-fp16": "fp16", "tflite-int8": "int8", "tflite-int8-fh": "int8"}


def runtime_missing(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine (a missing runtime), or None."""
    have = lambda module: importlib.util.find_spec(module) is not None  # noqa: E731
    if FILE_BACKENDS[backend][0] == "onnxruntime":
        for module, what in (("onnxruntime", "onnxruntime"), ("tf2onnx", "tf2onnx (to export)"),
                             ("onnx", "onnx (to export)")):
            if not have(module):
                return f"{what} is not installed here"
    elif not any(have(m) for m in ("ai_edge_litert", "tflite_runtime", "tensorflow")):
        return "no TFLite runtime is installed here (pip install ai-edge-litert)"
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
    nms: str = "soft"
    random_inputs: int = 2
    memory: bool = True
    device_results: tuple = ()
    spec_args: dict = field(default_factory=dict)  # how the spec was named, for the record

    def problem(self) -> str | None:
        """The first option that cannot work, as a one-line message (None: all fine)."""
        for name in ("threads", "runs", "batch", "calibration_images", "max_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                return f"--{name.replace('_', '-')} {value}: must be at least 1"
        if self.warmup < 0:
            return f"--warmup {self.warmup}: must be >= 0"
        if self.annotations and not self.data:
            return "--annotations needs --data (the images it describes)"
        if self.data and not self.annotations:
            return (f"--data {self.data}: give --annotations (the COCO instances file of these "
                    "images); there is no instances.json in it")
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


