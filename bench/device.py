"""Read the JSON that bench/device_runner.py wrote on other devices, for the report.

Each file is checked (schema tag, required keys, sane numbers) and flattened into one row
with the same latency keys as ``bench.latency.latency_stats``, so device rows can sit in
the same table as the host's.
"""
import glob
import math
import os

from bench.latency import STAT_KEYS
from edetgraph.files import read_json

SCHEMA = "edetgraph.device_result/1"  # must match device_runner.SCHEMA (a test checks)
REQUIRED = ("label", "timestamp", "model.name", "model.bytes", "model.sha256", "model.format",
            "runtime.name", "runtime.version", "latency.runs", "environment.device",
            "environment.machine", "environment.system", "init_ms") + tuple(
                f"latency.{k}" for k in STAT_KEYS)
BACKEND = {"tflite": "tflite", "onnx": "onnxruntime", "xml": "openvino", "mnn": "mnn",
           "param": "ncnn"}


class DeviceResultError(ValueError):
    """A device result file that is not what device_runner writes; names the file and key."""


def _get(data, dotted):
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(dotted)
        data = data[part]
    return data


def _number(path, result, key) -> float:
    value = _get(result, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DeviceResultError(f"{path}: '{key}' should be a finite number, got {value!r}")
    if value < 0:
        raise DeviceResultError(f"{path}: '{key}' is negative ({value})")
    return value


def validate_device_result(result, path="<result>") -> dict:
    """Raise DeviceResultError unless ``result`` is a well-formed device_runner result."""
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        got = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise DeviceResultError(f"{path}: not a device_runner result (schema {got!r}, "
                                f"expected {SCHEMA!r})")
    for key in REQUIRED:
        try:
            _get(result, key)
        except KeyError:
            raise DeviceResultError(f"{path}: missing key '{key}'") from None
    lat = {k: _number(path, result, f"latency.{k}") for k in STAT_KEYS}
    if not lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["max_ms"]:
        raise DeviceResultError(f"{path}: latency figures out of order "
                                "(need min <= p50 <= p90 <= max)")
    if _number(path, result, "latency.runs") < 1:
        raise DeviceResultError(f"{path}: 'latency.runs' must be at least 1")
    if result["model"]["format"] not in BACKEND:
        raise DeviceResultError(f"{path}: 'model.format' is {result['model']['format']!r}, "
                                f"expected one of {sorted(BACKEND)}")
    return result


def device_row(result, source="") -> dict:
    """One flat table row from a validated result."""
    env, rt, lat = result["environment"], result["runtime"], result["latency"]
    backend = ("openvino" if rt["name"] == "openvino"
               else BACKEND[result["model"]["format"]])
    cpus = env.get("cpus_usable") or env.get("cpu_count")
    accel = rt.get("delegate") or ",".join(rt.get("providers") or []) or None
    return {"name": f"{backend}@{result['label']}", "backend": backend, "label": result["label"],
            "device": f"{env['device']} ({env['system']} {env['machine']}, {cpus} CPUs)",
            "runtime": f"{rt['name']} {rt['version']}", "threads": rt.get("threads"),
            "accelerator": accel, "model": result["model"]["name"],
            "sha256": result["model"]["sha256"], "file_bytes": result["model"]["bytes"],
            "init_ms": result["init_ms"], "timestamp": result["timestamp"],
            **{k: lat[k] for k in STAT_KEYS},
            "runs": lat["runs"], "batch": lat.get("batch", 1),
            "throughput_ips": lat.get("throughput_ips"), "host": False, "source": source}


def _expand(paths) -> list:
    files = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        p = os.fspath(p)
        files.extend(sorted(glob.glob(os.path.join(p, "*.json"))) if os.path.isdir(p) else [p])
    return files


def load_device_results(paths) -> list:
    """Validate device_runner JSON files (or directories of them) and return their rows."""
    rows = []
    for path in _expand(paths):
        result = read_json(path, DeviceResultError)
        rows.append(device_row(validate_device_result(result, path), source=path))
    return rows
