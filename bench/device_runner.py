#!/usr/bin/env python3
"""Time one .tflite, .onnx, .mnn or NCNN .param model on this device and print the result as
JSON.

Self-contained on purpose: copy this single file to a phone (Termux), a Raspberry Pi
or an edge box that has Python, numpy and ONE of ai-edge-litert, tflite-runtime,
onnxruntime, MNN or ncnn, run it, and bring the JSON back for the report (bench.device merges it).
It never imports TensorFlow or anything from edetgraph.
"""
import argparse
import contextlib
import datetime
import hashlib
import importlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version

import numpy as np

SCHEMA = "edetgraph.device_result/1"
TFLITE_MODULES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
DISTRIBUTIONS = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                 "onnxruntime": "onnxruntime"}
STAT_KEYS = ("p50_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "std_ms")


class Failure(Exception):
    """Reported as one line on stderr, exit status 2."""


def printable(text):
    """``text`` with control characters (terminal escapes among them) shown as ``\\x1b``-style
    codes: strings from a file's metadata are someone else's, and must not drive the terminal.
    (edetgraph.cli.printable does the same; this file imports nothing from edetgraph.)"""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def write_whole(path, data):
    """Write ``data`` (str or bytes) to ``path`` whole or not at all: a new file made
    exclusively (never a planted link) in ``path``'s folder, renamed over ``path`` (a link
    there is replaced, its target untouched). An existing folder at ``path`` is refused."""
    path = os.path.abspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        raise Failure(f"{path}: is an existing folder; refusing to replace it with a file")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial",
                               dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


# LiteRT's C++ logs this to file descriptor 2 when an interpreter first applies XNNPACK; no
# Python setting reaches it. A copy of edetgraph.cli.quiet_native's filter, for this line
# only: this file imports nothing from edetgraph.
_DELEGATE_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@contextlib.contextmanager
def quiet_delegate_notice():
    """Run the block with file descriptor 2 captured; then replay every line but LiteRT's
    delegate notice on stderr (a real error still shows)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() != _DELEGATE_NOTICE]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def _line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _version(module_name):
    top = module_name.split(".")[0]
    try:
        return version(DISTRIBUTIONS.get(top, top))
    except Exception:  # metadata missing on some device installs
        return getattr(sys.modules.get(top), "__version__", "unknown")


def latency_stats(seconds, batch=1):
    """Same statistics as bench.latency.latency_stats (a test keeps the two in step)."""
    ms = np.asarray(seconds, np.float64) * 1e3
    stats = dict(zip(STAT_KEYS, (float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
                                 float(ms.mean()), float(ms.min()), float(ms.max()),
                                 float(ms.std()))))
    stats.update(runs=int(ms.size), batch=int(batch),
                 throughput_ips=float(batch * 1e3 / stats["mean_ms"]) if stats["mean_ms"] else None)
    return stats


def _signature(name, shape, dtype, quant=None):
    return {"name": name, "shape": [None if s is None or s < 0 else int(s) for s in shape],
            "dtype": np.dtype(dtype).name, "quantization": quant}


class TFLiteModel:
    """LiteRT or tflite-runtime interpreter; quantized inputs/outputs handled as float."""

    def __init__(self, path, threads, delegate):
        errors, module = [], None
        for name in TFLITE_MODULES:
            try:
                module = importlib.import_module(name)
                break
            except ImportError as exc:
                errors.append(f"{name}: {_line(exc)}")
        if module is None:
            raise Failure("no TFLite runtime installed: pip install ai-edge-litert (or "
                          f"tflite-runtime on numpy<2 devices) [{'; '.join(errors)}]")
        self.runtime, self.version = name.split(".")[0], _version(name)
        self.accelerator = {"delegate": delegate}
        try:
            delegates = [module.load_delegate(delegate)] if delegate else None
            with quiet_delegate_notice():
                self.interp = module.Interpreter(model_path=path, num_threads=threads,
                                                 experimental_delegates=delegates)
                self.interp.allocate_tensors()
        except Exception as exc:
            raise Failure(f"{path}: {self.runtime} cannot load it: {_line(exc)}") from None
        self.ins, self.outs = self.interp.get_input_details(), self.interp.get_output_details()
        names = self._signature_names()
        self.inputs = [self._sig(d, d["name"]) for d in self.ins]
        self.outputs = [self._sig(d, names.get(d["index"], d["name"])) for d in self.outs]

    def _signature_names(self):
        """{tensor index: output name} from the file's only signature (none: tensor names)."""
        sigs = self.interp.get_signature_list()
        if len(sigs) != 1:
            return {}
        details = self.interp.get_signature_runner(next(iter(sigs))).get_output_details()
        return {d["index"]: n for n, d in details.items()}

    @staticmethod
    def _sig(d, name):
        scale, zero = d["quantization"]
        quant = [float(scale), int(zero)] if scale else None
        return _signature(name, d.get("shape_signature", d["shape"]), d["dtype"], quant)

    def prepare(self, values):
        """Convert once, outside timing: float arrays for quantized inputs are quantized."""
        ready = []
        for d, v in zip(self.ins, values):
            scale, zero = d["quantization"]
            dtype = np.dtype(d["dtype"])
            if scale and dtype.kind in "iu" and v.dtype.kind == "f":
                lim = np.iinfo(dtype)
                v = np.clip(np.round(v / scale) + zero, lim.min, lim.max)
            v = np.ascontiguousarray(v, dtype)
            if tuple(v.shape) != tuple(d["shape"]):
                self.interp.resize_tensor_input(d["index"], v.shape)
                self.interp.allocate_tensors()
            ready.append(v)
        self.ins, self.outs = self.interp.get_input_details(), self.interp.get_output_details()
        return ready

    def run(self, ready):
        for d, v in zip(self.ins, ready):
            self.interp.set_tensor(d["index"], v)
        self.interp.invoke()
        # views of the interpreter's output buffers (valid until the next run): no copy is
        # timed, as none is for ONNX Runtime, whose run() returns its own arrays
        return [self.interp.tensor(d["index"])() for d in self.outs]

    def dequantize(self, outputs):
        deq = []
        for d, y in zip(self.outs, outputs):
            scale, zero = d["quantization"]
            deq.append((y.astype(np.float32) - zero) * np.float32(scale)
                       if scale and y.dtype.kind in "iu" else y)
        return deq


class OnnxModel:
    """ONNX Runtime session (CPU provider unless --provider names another)."""
    TYPES = {"float": "float32", "double": "float64", "float16": "float16", "int64": "int64",
             "int32": "int32", "int8": "int8", "uint8": "uint8", "bool": "bool"}

    def __init__(self, path, threads, provider):
        try:
            import onnxruntime as ort  # deferred: a device needs only one runtime
        except ImportError:
            raise Failure("onnxruntime is not installed: pip install onnxruntime") from None
        self.runtime, self.version = "onnxruntime", ort.__version__
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # no busy-waiting between calls: on small shared devices it steals the cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [provider, "CPUExecutionProvider"] if provider else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(path, opts,
                                                providers=list(dict.fromkeys(providers)))
        except Exception as exc:
            raise Failure(f"{path}: onnxruntime cannot load it: {_line(exc)}") from None
        self.accelerator = {"providers": self.session.get_providers()}
        self.inputs = [self._sig(t) for t in self.session.get_inputs()]
        self.outputs = [self._sig(t) for t in self.session.get_outputs()]

    def _sig(self, t):
        shape = [d if isinstance(d, int) else None for d in t.shape]
        return _signature(t.name, shape, self.TYPES.get(t.type[7:-1], "float32"))

    def prepare(self, values):
        return {s["name"]: np.ascontiguousarray(v, s["dtype"]) for s, v in zip(self.inputs, values)}

    def run(self, ready):
        return self.session.run(None, ready)

    def dequantize(self, outputs):
        return outputs


class OpenVinoModel:
    """OpenVINO CPU plugin (optional: `pip install openvino`) on an .onnx file or an IR .xml
    (e.g. an int8 file from NNCF); precision f32 or bf16."""

    def __init__(self, path, threads, precision):
        try:
            import openvino as ov  # deferred: a device needs only one runtime
        except ImportError:
            raise Failure("openvino is not installed: pip install openvino") from None
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property(
                "CPU", "OPTIMIZATION_CAPABILITIES"):
            raise Failure("--openvino bf16: this CPU has no bf16 support")
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        except Exception as exc:
            raise Failure(f"{path}: openvino cannot load it: {_line(exc)}") from None
        self.runtime, self.version = "openvino", ov.__version__.split("-")[0]
        self.accelerator = {"providers": [f"CPU {precision}"]}
        self.request = self.compiled.create_infer_request()
        self.inputs = [self._sig(p) for p in self.compiled.inputs]
        self.outputs = [self._sig(p) for p in self.compiled.outputs]

    @staticmethod
    def _sig(port):
        shape = [None if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
        return _signature(port.any_name, shape, port.get_element_type().to_dtype())

    def prepare(self, values):
        return [np.ascontiguousarray(v, s["dtype"]) for s, v in zip(self.inputs, values)]

    def run(self, ready):
        result = self.request.infer(ready, share_outputs=True)   # no copy timed (see TFLite)
        return [result[p] for p in self.compiled.outputs]

    def dequantize(self, outputs):
        return outputs


@contextlib.contextmanager
def quiet_mnn_notices():
    """Run the block with file descriptor 1 captured: MNN's native start-up notices ("The
    device supports: ...", "MNN use high precision") are dropped, other lines go to stderr
    (stdout carries the JSON result)."""
    import ctypes  # deferred: only MNN models need it
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).fflush(None)   # C stdio buffers what it prints to a file
            os.dup2(saved, 1)
            os.close(saved)
            captured.seek(0)
            kept = [ln for ln in captured.read().decode(errors="replace").splitlines()
                    if ln.strip() and not ln.startswith(_MNN_NOTICES)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


_MNN_NOTICES = ("The device supports: ", "MNN use high precision", "MNN use normal precision",
                "MNN use low precision")


class MnnModel:
    """MNN's Module API on the CPU backend (optional: `pip install mnn`), high precision."""

    def __init__(self, path, threads):
        try:
            with quiet_mnn_notices():
                import MNN  # deferred: a device needs only one runtime
        except ImportError:
            raise Failure("MNN is not installed: pip install mnn") from None
        self.mnn = MNN
        config = {"backend": "CPU", "precision": "high", "numThread": threads or 1}
        try:
            with quiet_mnn_notices():
                runtime = MNN.nn.create_runtime_manager((config,))
                info = MNN.nn.load_module_from_file(path, [], [],
                                                    runtime_manager=runtime).get_info()
                self.net = MNN.nn.load_module_from_file(
                    path, info["inputNames"], info["outputNames"], runtime_manager=runtime)
        except Exception as exc:
            raise Failure(f"{path}: MNN cannot load it: {_line(exc)}") from None
        self.runtime, self.version = "mnn", info.get("version", "")
        self.accelerator = {"providers": ["CPU high precision"]}
        self.inputs = [_signature(n, list(v.shape), "float32")
                       for n, v in zip(info["inputNames"], info["inputs"])]
        self.outputs = [_signature(n, [], "float32") for n in info["outputNames"]]

    def prepare(self, values):
        mnn = self.mnn   # NCHW in MNN's Python API means "as the model lays it out"
        return [mnn.expr.const(np.ascontiguousarray(v, s["dtype"]), list(np.shape(v)),
                               mnn.expr.NCHW) for s, v in zip(self.inputs, values)]

    def run(self, ready):
        return self.net.forward(ready)

    def dequantize(self, outputs):
        mnn = self.mnn
        return [np.array(mnn.expr.convert(o, mnn.expr.NCHW).read()) for o in outputs]


class NcnnModel:
    """ncnn's Net on the CPU (optional: `pip install ncnn`), float16/bfloat16 off: a .param
    file with its .bin beside it, one image per call (an NCNN model has no batch axis)."""
    LOW_PRECISION = ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed",
                     "use_bf16_storage", "use_bf16_packed")

    def __init__(self, path, threads):
        # OpenMP threads wait passively (read by ncnn's libgomp when it loads), as ONNX Runtime
        # runs without spinning here: spinning threads on a busy device steal its cores (on a
        # shared 2-core x86 box, D0 took 5.4 s a call with spinning, 0.14 s without)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import ncnn  # deferred: a device needs only one runtime
        except ImportError:
            raise Failure("ncnn is not installed: pip install ncnn") from None
        self.ncnn, self.net = ncnn, ncnn.Net()
        self.net.opt.num_threads = threads or 1
        for option in self.LOW_PRECISION:
            setattr(self.net.opt, option, False)
        weights = path[:-len(".param")] + ".bin"
        if not os.path.isfile(weights):
            raise Failure(f"{path}: its weights {os.path.basename(weights)} are not beside it")
        if self.net.load_param(path) or self.net.load_model(weights):
            raise Failure(f"{path}: ncnn cannot load it (with {os.path.basename(weights)})")
        self.runtime, self.version = "ncnn", ncnn.__version__
        self.accelerator = {"providers": ["CPU fp32"]}
        shape = self._input_shape(path)
        if len(self.net.input_names()) != 1 or not all(shape):
            raise Failure(f"{path}: one input with its shape in the Input layer expected "
                          "(as exporters/to_ncnn.py writes it)")
        self.inputs = [_signature(self.net.input_names()[0], [1, *shape], "float32")]
        # in name order, as ONNX files from TF list them: a .param records no output order
        self.outputs = [_signature(n, [], "float32") for n in sorted(self.net.output_names())]

    @staticmethod
    def _input_shape(path):
        """(c, h, w) from the Input layer's 2=, 1=, 0= (our NHWC image without its batch)."""
        with open(path, errors="replace") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == "Input" and len(fields) >= 5:
                    params = dict(p.split("=", 1) for p in fields[5:] if "=" in p)
                    return [int(params.get(k, 0)) for k in ("2", "1", "0")]
        return [0]

    def prepare(self, values):
        return [np.ascontiguousarray(v, np.float32) for v in values]

    def run(self, ready):
        (images,), per_image = ready, []
        for image in images:
            with self.net.create_extractor() as ex:
                ex.input(self.inputs[0]["name"], self.ncnn.Mat(image))
                pairs = [ex.extract(s["name"]) for s in self.outputs]
                if any(status for status, _ in pairs):
                    raise RuntimeError("ncnn could not compute every output")
                per_image.append([mat for _, mat in pairs])
        return per_image

    def dequantize(self, outputs):
        return [np.stack([np.array(image[i]) for image in outputs])
                for i in range(len(self.outputs))]


def load_model(path, threads=None, delegate=None, provider=None, openvino=None):
    """The model wrapper for ``path``'s extension, with one-line failures."""
    if not path.endswith((".tflite", ".onnx", ".xml", ".mnn", ".param")):
        raise Failure(f"{path}: expected a .tflite, .onnx, .mnn, NCNN .param or OpenVINO .xml "
                      "file")
    if not os.path.isfile(path):
        raise Failure(f"{path}: no such file")
    if path.endswith((".mnn", ".param")):
        if delegate or provider or openvino:
            raise Failure(f"{path}: --delegate, --provider and --openvino are not for "
                          f".{path.rsplit('.', 1)[-1]} models")
        return MnnModel(path, threads) if path.endswith(".mnn") else NcnnModel(path, threads)
    if openvino or path.endswith(".xml"):
        if path.endswith(".tflite"):
            raise Failure(f"{path}: --openvino runs .onnx files and OpenVINO .xml IRs")
        return OpenVinoModel(path, threads, openvino or "f32")
    if path.endswith(".tflite"):
        if provider:
            raise Failure(f"{path}: --provider is for .onnx models (use --delegate for .tflite)")
        return TFLiteModel(path, threads, delegate)
    if delegate:
        raise Failure(f"{path}: --delegate is for .tflite models (use --provider for .onnx)")
    return OnnxModel(path, threads, provider)


def make_inputs(signatures, source, seed):
    """Arrays for every input: 'random' (seeded) or a .npy (one input) / .npz (by name)."""
    if source == "random":
        rng = np.random.default_rng(seed)
        values = []
        for s in signatures:
            shape = [d or 1 for d in s["shape"]]
            dtype = np.dtype(s["dtype"])
            if dtype.kind in "iu":
                lim = np.iinfo(dtype)
                values.append(rng.integers(lim.min, lim.max, shape, endpoint=True).astype(dtype))
            else:  # images in this project are 0-255 before normalisation
                values.append(rng.uniform(0.0, 255.0, shape).astype(dtype))
        return values
    if not os.path.isfile(source):
        raise Failure(f"{source}: no such input file")
    try:
        data = np.load(source)
    except Exception as exc:
        raise Failure(f"{source}: cannot read it as .npy/.npz: {_line(exc)}") from None
    if isinstance(data, np.ndarray):
        if len(signatures) != 1:
            raise Failure(f"{source}: model has {len(signatures)} inputs; "
                          "give a .npz keyed by input name")
        values = [data]
    else:
        missing = [s["name"] for s in signatures if s["name"] not in data.files]
        if missing:
            raise Failure(f"{source}: no array for input(s) {missing}")
        values = [data[s["name"]] for s in signatures]
    for s, v in zip(signatures, values):
        want = s["shape"]
        fits = len(v.shape) == len(want) and all(w is None or w == g
                                                 for w, g in zip(want, v.shape))
        if not fits:
            raise Failure(f"{source}: shape {list(v.shape)} does not fit input "
                          f"'{s['name']}' {want}")
    return values


def _device_name():
    """Best-effort device model: device tree (Pi, Jetson), Android props, CPU model name."""
    for tree in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            with open(tree, "rb") as f:
                return f.read().decode(errors="replace").strip("\x00 \n")
        except OSError:
            pass
    if "ANDROID_ROOT" in os.environ:
        try:
            props = [subprocess.run(["getprop", p], capture_output=True, text=True,
                                    timeout=3).stdout.strip()
                     for p in ("ro.product.manufacturer", "ro.product.model")]
            return " ".join(p for p in props if p) or "Android device"
        except (OSError, subprocess.SubprocessError):
            return "Android device"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Hardware", "Model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment():
    """Python, numpy and machine facts for the report."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "numpy": np.__version__, "platform": platform.platform(),
            "system": platform.system(), "release": platform.release(), "machine": platform.machine(),
            "processor": platform.processor(), "device": _device_name(),
            "cpu_count": os.cpu_count(), "cpus_usable": affinity,
            "android": "ANDROID_ROOT" in os.environ, "hostname": platform.node()}


def _file_facts(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": os.path.abspath(path), "name": os.path.basename(path),
            "format": path.rsplit(".", 1)[-1], "bytes": os.path.getsize(path),
            "sha256": digest.hexdigest()}


def file_says(path):
    """What an edetgraph file says it is (its metadata's facts), None for other files: a
    TFLite file's edetgraph.json is zipped after its flatbuffer, an ONNX file keeps it in
    metadata_props (edetgraph.verify.file_metadata reads the same, with more)."""
    text = None
    try:
        if path.endswith(".tflite"):
            import zipfile  # deferred: only TFLite files zip their associated files
            with zipfile.ZipFile(path) as zf:
                text = zf.read("edetgraph.json").decode("utf-8")
        elif path.endswith(".onnx"):
            import onnxruntime as ort  # deferred: each model needs only its own runtime
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            text = sess.get_modelmeta().custom_metadata_map.get("edetgraph")
        elif path.endswith(".mnn"):
            with quiet_mnn_notices():
                import MNN  # deferred: each model needs only its own runtime
                text = MNN.nn.load_module_from_file(path, [], []).get_info().get("bizCode")
        elif path.endswith(".param"):      # NCNN: the metadata is NAME.json beside NAME.param
            with open(path[:-len(".param")] + ".json", encoding="utf-8") as f:
                text = f.read(1 << 20)
        facts = json.loads(text) if text else None
    except Exception:  # no zip, no key, no runtime: the file says nothing
        return None
    if not isinstance(facts, dict):
        return None
    inp, out = facts.get("input", {}), facts.get("outputs", {})
    return {"model": facts.get("model"), "num_classes": facts.get("num_classes"),
            "labels": facts.get("labels"), "input": {k: inp.get(k) for k in (
                "dtype", "height", "width", "kind", "normalisation")},
            "outputs": {k: out.get(k) for k in ("kind", "nms", "boxes")},
            "edetgraph_version": facts.get("edetgraph_version"), "weights": facts.get("weights")}


def says_lines(says):
    """The file's own account, for people."""
    if says is None:
        return ["[device_runner] the file carries no edetgraph metadata"]
    inp, out, norm = says["input"], says["outputs"], says["input"].get("normalisation") or {}
    names = ", ".join(f"{k} {v}" for k, v in list((says["labels"] or {}).items())[:6])
    return [f"[device_runner] the file says: {says['model']}, {says['num_classes']} classes "
            f"({names}{' ...' if len(says['labels'] or {}) > 6 else ''}), edetgraph "
            f"{says['edetgraph_version']}, weights {says['weights']}",
            f"[device_runner]   input {inp['dtype']} {inp['height']}x{inp['width']} RGB, "
            f"(pixel - {norm.get('mean')}) / {norm.get('std')} by {norm.get('done_by')}; "
            f"outputs {out['kind']}" + (f" ({out['nms']} NMS, boxes in {out['boxes']})"
                                        if out["kind"] == "detections" else "")]


def benchmark(args):
    """Load, warm up, time; returns the result dict (see SCHEMA)."""
    says = file_says(args.model)
    for line in says_lines(says):
        print(printable(line), file=sys.stderr)
    start = time.perf_counter()
    model = load_model(args.model, args.threads, args.delegate, args.provider, args.openvino)
    init_s = time.perf_counter() - start
    values = make_inputs(model.inputs, args.input, args.seed)
    batch = int(values[0].shape[0]) if values and values[0].ndim else 1
    ready = model.prepare(values)
    print(f"[device_runner] {model.runtime} {model.version}: loaded in {init_s * 1e3:.1f} ms; "
          f"{args.warmup} warm-up + {args.runs} timed runs", file=sys.stderr)
    try:
        times, outputs = [], None
        for _ in range(args.warmup + args.runs):
            outputs = None      # LiteRT does not run while views of its outputs are alive
            t0 = time.perf_counter()
            outputs = model.run(ready)
            times.append(time.perf_counter() - t0)
    except Exception as exc:
        raise Failure(f"{args.model}: inference failed: {_line(exc)}") from None
    if args.save_outputs:
        names = [s["name"] for s in model.outputs]
        buffer = io.BytesIO()
        np.savez(buffer, **dict(zip(names, model.dequantize(outputs))))
        write_whole(args.save_outputs, buffer.getvalue())
    return {"schema": SCHEMA, "label": args.label,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": _file_facts(args.model), "file_says": says,
            "runtime": {"name": model.runtime, "version": model.version, "threads": args.threads,
                        **model.accelerator},
            "inputs": model.inputs, "outputs": model.outputs,
            "input_source": args.input if args.input != "random" else f"random(seed={args.seed})",
            "init_ms": init_s * 1e3, "first_run_ms": times[0] * 1e3, "warmup": args.warmup,
            "latency": latency_stats(times[args.warmup:], batch),
            "environment": environment()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Needs only Python 3, numpy and one runtime "
        "(ai-edge-litert or tflite-runtime for .tflite, onnxruntime for .onnx, mnn for .mnn, "
        "ncnn for .param).",
        epilog="Example: python device_runner.py d0_int8.tflite --threads 4 --runs 100 "
               "--label pixel7 --out pixel7_d0_int8.json. The JSON goes to stdout (and --out); "
               "progress and errors go to stderr; a failure exits with status 2.")
    p.add_argument("model", help="model file, .tflite, .onnx, .mnn, NCNN .param (its .bin "
                   "beside it) or OpenVINO .xml")
    p.add_argument("--runs", type=int, metavar="N", default=50, help="timed runs (default 50)")
    p.add_argument("--warmup", type=int, metavar="N", default=10,
                   help="untimed warm-up runs (default 10)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: runtime's)")
    p.add_argument("--input", default="random", metavar="FILE|random",
                   help="'random' (default; float inputs uniform in 0-255, integer inputs over "
                   "their range), a .npy for a one-input model or a .npz keyed by input name; "
                   "float data for a quantized input is quantized with its scale/zero point")
    p.add_argument("--seed", type=int, metavar="K", default=0,
                   help="seed for --input random (default 0)")
    p.add_argument("--delegate", metavar="PATH",
                   help="TFLite external delegate library (.so) to load")
    p.add_argument("--provider", metavar="NAME", help="ONNX Runtime execution provider, e.g. "
                   "XnnpackExecutionProvider (CPU kept as fallback)")
    p.add_argument("--openvino", choices=("f32", "bf16"),
                   help="run an .onnx file in OpenVINO (optional runtime) at this precision "
                   "instead of ONNX Runtime; .xml IRs always run in OpenVINO (default f32)")
    p.add_argument("--out", metavar="FILE.json", help="also write the JSON to this file")
    p.add_argument("--label", metavar="NAME",
                   help="name for this run in the report (default: the device's hostname)")
    p.add_argument("--save-outputs", metavar="FILE.npz",
                   help="write the last run's outputs (dequantized) to this .npz, to compare "
                   "with the host's")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error("--runs and --threads must be >= 1, --warmup >= 0")
    args.label = args.label or platform.node() or "device"
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        result = benchmark(args)
        text = json.dumps(result, indent=2)
        if args.out:   # under a temporary name first: a result file is whole or absent
            write_whole(args.out, text + "\n")
    except Failure as exc:
        print(f"device_runner: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out in a missing directory
        print(f"device_runner: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
