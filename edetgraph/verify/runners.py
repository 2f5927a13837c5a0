"""One runner per backend, all of the same shape, so parity and latency code is backend-blind.

    runner = make_runner("tflite", "model.tflite", threads=2)
    outputs = runner.run(images)          # {output name: np.ndarray}, file order

Float in, float out: quantized (int8/uint8/int16) TFLite inputs are quantized and outputs
dequantized with each tensor's own scale and zero point, unless the runner is made with
``raw=True``. Only the ``tf`` kind imports TensorFlow, and only when it is made; the ONNX
Runtime and TFLite runners work on a machine without it.
"""
import importlib
import inspect
import os
import time

import numpy as np

from edetgraph.cli import quiet_native
from edetgraph.verify.mnn_runner import MnnRunner
from edetgraph.verify.ncnn_runner import NcnnRunner
from edetgraph.verify.ov_runner import OpenVinoRunner
from edetgraph.verify.runner_base import (SUFFIX, Runner, RunnerError, TensorInfo,  # noqa: F401
                                          check_file, first_line, version)

TFLITE_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime session; ``providers`` defaults to the CPU provider."""
    kind = "onnxruntime"

    def __init__(self, path, threads=None, providers=None, spinning=False):
        super().__init__(check_file(path, self.kind), threads)
        try:
            import onnxruntime as ort  # deferred: each runner needs only its own runtime
        except ImportError as exc:
            raise RunnerError(f"{self.path}: onnxruntime is not installed "
                              f"(pip install onnxruntime): {first_line(exc)}") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        if not spinning:
            # ORT's workers busy-wait after each call by default; on a small shared machine
            # that steals the cores from whatever runs next (measured: its own p50 193 -> 109
            # ms for D0 on 2 cores, and the next backend in an interleaved table slowed too).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        start = time.perf_counter()
        try:
            self.session = ort.InferenceSession(
                self.path, opts, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # ORT raises several unrelated types for a bad file
            raise RunnerError(f"{self.path}: onnxruntime cannot load it: "
                              f"{first_line(exc)}") from None
        self.load_seconds = time.perf_counter() - start
        self.runtime, self.runtime_version = "onnxruntime", ort.__version__
        self.accelerator = self.session.get_providers()
        self.input_details = [self._info(t) for t in self.session.get_inputs()]
        self.output_details = [self._info(t) for t in self.session.get_outputs()]
        self._names = [d.name for d in self.output_details]
        # 'tensor(float)' -> float32 etc., so float64 callers are cast, not rejected
        self._dtypes = {d.name: np.dtype(d.dtype) for d in self.input_details}

    @staticmethod
    def _info(t) -> TensorInfo:
        onnx_type = {"float": "float32", "double": "float64", "float16": "float16",
                     "int64": "int64", "int32": "int32", "int8": "int8", "uint8": "uint8",
                     "bool": "bool"}.get(t.type[len("tensor("):-1], t.type)
        shape = tuple(d if isinstance(d, int) else None for d in t.shape)
        return TensorInfo(t.name, shape, onnx_type)

    def run(self, x) -> dict:
        feeds = {k: np.asarray(v, self._dtypes[k]) for k, v in self._feeds(x).items()}
        return dict(zip(self._names, self.session.run(self._names, feeds)))


def _load_tflite_module():
    """The first importable TFLite interpreter module, in preference order."""
    errors = []
    for name in TFLITE_MODULES:
        try:
            if name == "tensorflow.lite":  # the tensorflow.lite *module* lacks Interpreter
                return name, importlib.import_module("tensorflow").lite
            return name, importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {first_line(exc)}")
    return None, "; ".join(errors)


def tflite_interpreter(path=None, *, no_delegates: bool = False, **kw):
    """An interpreter of the first TFLite runtime installed (``TFLITE_MODULES`` order) for
    the file ``path`` (or ``model_content=`` bytes); ``no_delegates`` leaves out the default
    delegates (XNNPACK), so the op list is the file's own. With them, it comes allocated:
    XNNPACK is applied then, and its "Created ... delegate" notice kept off stderr."""
    name, module = _load_tflite_module()
    if name is None:
        raise RunnerError(f"{path}: no TFLite runtime installed (tried "
                          f"{', '.join(TFLITE_MODULES)}; pip install ai-edge-litert)")
    if no_delegates:
        resolver = getattr(module, "OpResolverType", None) or module.experimental.OpResolverType
        kw["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        return module.Interpreter(model_path=os.fspath(path), **kw) if path else \
            module.Interpreter(**kw)
    with quiet_native():
        interp = module.Interpreter(model_path=os.fspath(path), **kw) if path else \
            module.Interpreter(**kw)
        interp.allocate_tensors()
    return interp


class TFLiteRunner(Runner):
    """LiteRT / tflite-runtime / tf.lite interpreter (first one importable)."""
    kind = "tflite"

    def __init__(self, path, threads=None, delegate=None, raw=False):
        super().__init__(check_file(path, self.kind), threads)
        name, module = _load_tflite_module()
        if name is None:
            raise RunnerError(f"{self.path}: no TFLite runtime installed (tried "
                              f"{', '.join(TFLITE_MODULES)}; pip install ai-edge-litert)")
        self.raw = raw
        self.runtime, self.runtime_version = name.rsplit(".", 1)[0], version(name)
        self.accelerator = delegate
        start = time.perf_counter()
        try:
            delegates = None
            if delegate:
                load = getattr(module, "load_delegate", None) or module.experimental.load_delegate
                delegates = [load(os.fspath(delegate))]
            with quiet_native():    # XNNPACK's "Created ... delegate" notice
                self.interp = module.Interpreter(model_path=self.path, num_threads=threads,
                                                 experimental_delegates=delegates)
                self.interp.allocate_tensors()
        except Exception as exc:  # ValueError/RuntimeError for bad files and delegates
            raise RunnerError(f"{self.path}: {self.runtime} cannot load it: "
                              f"{first_line(exc)}") from None
        self.load_seconds = time.perf_counter() - start
        self._in = self.interp.get_input_details()
        self._out = self.interp.get_output_details()
        self.input_details = [self._info(d, d["name"]) for d in self._in]
        self.output_details = [self._info(d, n) for d, n in zip(self._out, self._out_names())]

    def _out_names(self) -> list:
        """Signature output names when the file has exactly one signature, else tensor names."""
        sigs = self.interp.get_signature_list()
        if len(sigs) != 1:
            return [d["name"] for d in self._out]
        by_index = {d["index"]: n for n, d in
                    self.interp.get_signature_runner(next(iter(sigs))).get_output_details().items()}
        return [by_index.get(d["index"], d["name"]) for d in self._out]

    @staticmethod
    def _info(d, name) -> TensorInfo:
        scale, zero = d["quantization"]
        shape = tuple(None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"]))
        quant = (float(scale), int(zero)) if scale else None
        return TensorInfo(name, shape, np.dtype(d["dtype"]).name, quant)

    def _to_model(self, value, d):
        scale, zero = d["quantization"]
        dtype = np.dtype(d["dtype"])
        if scale and not self.raw and dtype.kind in "iu":
            limits = np.iinfo(dtype)
            q = np.round(np.asarray(value, np.float32) / scale) + zero
            return np.clip(q, limits.min, limits.max).astype(dtype)
        return np.asarray(value, dtype)

    def _from_model(self, value, d):
        scale, zero = d["quantization"]
        if scale and not self.raw and value.dtype.kind in "iu":
            return (value.astype(np.float32) - zero) * np.float32(scale)
        return value

    def run(self, x) -> dict:
        return self._run(x, self.interp.get_tensor)

    def run_shared(self, x) -> dict:
        # interpreter.tensor(i)() is a view of the interpreter's own output buffer
        return self._run(x, lambda index: self.interp.tensor(index)())

    def _run(self, x, read) -> dict:
        feeds = self._feeds(x)
        for d, info in zip(self._in, self.input_details):
            value = self._to_model(feeds[info.name], d)
            if tuple(value.shape) != tuple(d["shape"]):  # dynamic dims: resize once per shape
                self.interp.resize_tensor_input(d["index"], value.shape)
                self.interp.allocate_tensors()
                self._in = self.interp.get_input_details()
                self._out = self.interp.get_output_details()
            self.interp.set_tensor(d["index"], value)
        self.interp.invoke()
        return {info.name: self._from_model(read(d["index"]), d)
                for d, info in zip(self._out, self.output_details)}


class TFRunner(Runner):
    """Any TF callable (tf.function, ConcreteFunction, SavedModel signature) or a SavedModel dir.

    Outputs: a dict keeps its keys, sorted (the order tf.nest gives the exported files);
    a tuple/list or single tensor becomes output_0, output_1… (TFLite's names for them).
    """
    kind = "tf"

    def __init__(self, path=None, threads=None, fn=None, signature="serving_default"):
        super().__init__(os.fspath(path) if path else None, threads)
        import tensorflow as tf  # deferred: file runners must work without TensorFlow
        self._tf = tf
        self.runtime, self.runtime_version = "tensorflow", tf.__version__
        self._set_threads(threads)
        start = time.perf_counter()
        if fn is None:
            if not path or not os.path.isdir(path):
                raise RunnerError(f"{path}: the tf backend needs fn= or a SavedModel directory")
            try:
                fn = tf.saved_model.load(path).signatures[signature]
            except Exception as exc:
                raise RunnerError(f"{path}: tensorflow cannot load signature "
                                  f"'{signature}': {first_line(exc)}") from None
        self.load_seconds = time.perf_counter() - start
        self.fn, self.accelerator = fn, getattr(fn, "__name__", type(fn).__name__)
        self._by_keyword, specs = self._input_specs(fn)
        self.input_details = [TensorInfo(n, tuple(s.shape.as_list()) if s.shape.rank is not None
                                         else (), s.dtype.name) for n, s in specs]
        self.output_details = self._output_specs(fn)

    @staticmethod
    def _output_specs(fn) -> list:
        """Output names/shapes when fn is traced with a fixed signature (else empty)."""
        outs = getattr(fn, "structured_outputs", None)
        if outs is None and getattr(fn, "input_signature", None) is not None:
            outs = fn.get_concrete_function().structured_outputs
        if outs is None:
            return []
        items = sorted(outs.items()) if isinstance(outs, dict) else (
            (f"output_{i}", t) for i, t in enumerate(outs if isinstance(outs, (list, tuple))
                                                       else [outs]))
        return [TensorInfo(n, tuple(t.shape.as_list()), t.dtype.name) for n, t in items
                if hasattr(t, "shape") and t.shape.rank is not None]

    def _set_threads(self, threads):
        if not threads:
            return
        try:  # only possible before TF's runtime starts; otherwise say so in info()
            self._tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        except RuntimeError:
            self.threads = f"{threads} (not applied: TensorFlow already initialised)"

    @staticmethod
    def _input_specs(fn):
        """(call by keyword?, [(name, TensorSpec)]) from whatever signature fn carries."""
        sig = getattr(fn, "structured_input_signature", None)
        if sig is not None and sig[1]:
            return True, list(sig[1].items())
        args = sig[0] if sig is not None else (getattr(fn, "input_signature", None) or ())
        return False, [(s.name or f"input_{i}", s) for i, s in enumerate(args)]

    def _feeds(self, x):
        return super()._feeds(x) if self.input_details else {"input_0": x}

    def run(self, x) -> dict:
        feeds = self._feeds(x)
        if self._by_keyword:
            out = self.fn(**{k: self._tf.constant(v) for k, v in feeds.items()})
        else:
            out = self.fn(*[self._tf.constant(v) for v in feeds.values()])
        if isinstance(out, dict):  # sorted, as tf.nest flattens it for the exported files
            return {k: np.asarray(out[k]) for k in sorted(out)}
        out = out if isinstance(out, (list, tuple)) else [out]
        return {f"output_{i}": np.asarray(v) for i, v in enumerate(out)}


RUNNERS = {"onnxruntime": OnnxRuntimeRunner, "tflite": TFLiteRunner, "tf": TFRunner,
           "openvino": OpenVinoRunner, "mnn": MnnRunner, "ncnn": NcnnRunner}


def kind_for_path(path) -> str:
    """Backend kind from a file name: .onnx -> onnxruntime, .tflite -> tflite, .xml (an
    OpenVINO IR) -> openvino, .mnn -> mnn, .param (with its .bin) -> ncnn, a folder -> tf (a
    SavedModel)."""
    path = os.fspath(path)
    for kind, suffixes in SUFFIX.items():
        if path.endswith(suffixes):
            return kind
    if os.path.isdir(path):
        return "tf"
    raise RunnerError(f"{path}: unknown model type (expected .onnx, .tflite, .xml, .mnn, "
                      ".param or a SavedModel dir)")


def make_runner(kind, path=None, threads=None, **opts):
    """A runner of ``kind`` ('onnxruntime' | 'tflite' | 'tf' | 'auto' from the path).

    Options: onnxruntime ``providers=[...]``; tflite ``delegate=PATH``, ``raw=True`` (no
    (de)quantization); tf ``fn=callable`` or a SavedModel ``path`` and ``signature=``;
    openvino ``precision=`` f32 | bf16 (an .onnx file or an int8 .xml IR); mnn
    ``precision=`` high | normal | low; ncnn ``precision=`` fp32 | fp16.
    """
    if kind == "auto":
        kind = kind_for_path(path)
    if kind not in RUNNERS:
        raise RunnerError(f"{path}: unknown backend '{kind}' (choose from {sorted(RUNNERS)})")
    allowed = set(inspect.signature(RUNNERS[kind]).parameters) - {"path", "threads"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise RunnerError(f"{path}: backend {kind} has no option {unknown} "
                          f"(options: {sorted(allowed)})")
    return RUNNERS[kind](path, threads=threads, **opts)
