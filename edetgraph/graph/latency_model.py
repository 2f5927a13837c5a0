"""Latency models: the file ``python -m bench.latency_model fit`` writes, and predicting a
spec's milliseconds from it, per component and in total. No TensorFlow.

A model belongs to one backend, thread count and machine. It gives each op key of
``edetgraph.graph.latency`` (``pw``, ``dw_k3_s2``, ``act_swish``, ``act_fused``, ...) a
linear cost in the op's features, in ms per unit::

    op ms   = sum_f kinds[key][f] * feature_f(op)    f: const, macs, in/out/w bytes, spill
    network = scale * sum(op ms) + per_op * ops + call ms
    call ms = call . (1, in bytes, out bytes, in spill, out spill)

where an op's spill is the bytes it moves beyond ``cache_bytes`` (a fitted size: beyond it
tensors stream from DRAM), and a call's spill its input and output bytes beyond it.

The kinds' coefficients come from the designed set (single ops and op chains), ``scale``
and ``per_op`` from small whole networks; ``fuses`` names the activations the backend runs
inside the op before them (those become ``act_fused``).
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from dataclasses import dataclass, field

from edetgraph.graph import latency
from edetgraph.cli import printable
from edetgraph.files import read_json
from edetgraph.graph.cost import COMPONENTS

SCHEMA = "edetgraph.latency_model/1"
CALL_FEATURES = ("const", "in_bytes", "out_bytes", "in_spill", "out_spill")
# An op key the designed set did not cover borrows the coefficients of a close one.
FALLBACK = {"act_hswish": "act_swish", "act_sigmoid": "act_swish"}


# The instruction sets that change which kernels a runtime picks, and so a fit's figures
# (x86: vector width, int8 dot products, bfloat16; ARM: dot products, half precision).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
             "avx_vnni", "asimd", "asimddp", "fphp", "i8mm", "sve")


class LatencyModelError(ValueError):
    """A model file that cannot be used; the message is one line naming the file."""


def this_cpu(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """``{"model": name, "isa": [flags of ISA_FLAGS it has]}`` of this machine's CPU (what a
    latency model records when it is fitted; ``isa`` empty where /proc/cpuinfo is missing)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware", "Model") and value.strip():
                    name = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {"model": name, "isa": [f for f in ISA_FLAGS if f in flags]}


def cpu_mismatch(model: "LatencyModel", here: dict | None = None) -> str | None:
    """Why ``model``'s predictions may not hold on this CPU (None: fitted on this kind): a
    fit on another instruction set, or a file that does not say where it was fitted."""
    if "@" in model.backend:    # fitted on a device's results: it predicts that device
        return None
    here = here or this_cpu()
    fitted = model.cpu
    where = model.source or "the latency model"
    if not fitted:
        return (f"{where} does not record the CPU it was fitted on (fitted {model.fitted}, "
                f"machine {model.machine!r}); if that was another kind of CPU than this one "
                f"({_kind(here)}), its predictions may not hold here: refit to have it checked")
    if set(fitted.get("isa", [])) != set(here["isa"]):
        return (f"{where} was fitted on {fitted.get('model')} ({_kind(fitted)}); this is "
                f"{here['model']} ({_kind(here)}): its predictions may not hold here (refit "
                "with bench.latency_model fit on this machine)")
    return None


def _kind(cpu: dict) -> str:
    return ", ".join(cpu.get("isa") or []) or "none of " + "/".join(ISA_FLAGS[:3])


@dataclass(frozen=True)
class LatencyModel:
    backend: str
    threads: int
    machine: str
    fitted: str                                   # ISO date and time of the fit
    kinds: dict                                   # op key -> {feature: ms per unit}
    call: dict                                    # per-call feature -> ms per unit
    fuses: dict = field(default_factory=dict)     # activation -> producer kinds
    cache_bytes: int = 16 * 2 ** 20               # beyond it, bytes count as spilled
    scale: float = 1.0
    per_op: float = 0.0
    designed_set: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)      # runtime, fit statistics, ...
    source: str | None = None
    cpu: dict = field(default_factory=dict)       # this_cpu() of the fit ({}: not recorded)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "backend": self.backend, "threads": self.threads,
                "machine": self.machine, "fitted": self.fitted,
                "fuses": {a: list(p) for a, p in self.fuses.items()},
                "cache_bytes": self.cache_bytes, "kinds": self.kinds, "call": self.call,
                "scale": self.scale,
                "per_op": self.per_op, "designed_set": self.designed_set, "info": self.info,
                "cpu": self.cpu}


def _number(where: str, value, positive=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LatencyModelError(f"{where} should be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise LatencyModelError(f"{where} must be {'positive' if positive else '>= 0'},"
                                f" got {value!r}")
    return float(value)


def _coefficients(where: str, table, allowed) -> dict:
    if not isinstance(table, dict):
        raise LatencyModelError(f"'{where}' should be a mapping, got {type(table).__name__}")
    for f, v in table.items():
        if f not in allowed:
            raise LatencyModelError(f"'{where}' has unknown feature {f!r} (known: "
                                    f"{', '.join(allowed)})")
        _number(f"'{where}.{f}'", v)
    return {f: float(v) for f, v in table.items()}


def _refuse_control_characters(value, where: str = "") -> None:
    """Names, sources and notes in a model file are printed by inspect, evaluate and the
    search: a control character (a terminal escape) in any string or key is refused."""
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                stack += [(k, at), (x, f"{at}.{k}" if at else str(k))]
        elif isinstance(v, list):
            stack += [(x, f"{at}[{i}]") for i, x in enumerate(v)]
        elif isinstance(v, str) and not all(c.isprintable() for c in v):
            raise LatencyModelError(f"'{printable(at) or '<key>'}' holds control characters "
                                    f"({printable(v)[:60]!s}); refusing a file that would write "
                                    "them to the terminal")


def from_dict(d, source: str | None = None) -> LatencyModel:
    """Check a model file's contents; LatencyModelError names the file and the problem."""
    where = source or "<latency model>"
    try:
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise LatencyModelError(f"not a latency model (schema {got!r}, expected {SCHEMA!r})")
        _refuse_control_characters(d)
        missing = [k for k in ("backend", "threads", "machine", "fitted", "kinds", "call")
                   if k not in d]
        if missing:
            raise LatencyModelError(f"missing key(s) {', '.join(missing)}")
        if not isinstance(d["threads"], int) or isinstance(d["threads"], bool) \
                or d["threads"] < 1:
            raise LatencyModelError(f"'threads' should be an integer >= 1, got {d['threads']!r}")
        if not isinstance(d["kinds"], dict) or not d["kinds"]:
            raise LatencyModelError("'kinds' should be a non-empty mapping of op kinds")
        kinds = {k: _coefficients(f"kinds.{k}", v, latency.FEATURES)
                 for k, v in d["kinds"].items()}
        cpu = d.get("cpu", {})
        if not isinstance(cpu, dict) or not isinstance(cpu.get("model", ""), str) or \
                not all(isinstance(f, str) for f in cpu.get("isa", [])):
            raise LatencyModelError("'cpu' should be {\"model\": name, \"isa\": [flags]}")
        fuses = d.get("fuses", {})
        if not isinstance(fuses, dict) or not all(isinstance(p, list) for p in fuses.values()):
            raise LatencyModelError("'fuses' should map activations to lists of op kinds")
        return LatencyModel(
            backend=str(d["backend"]), threads=d["threads"], machine=str(d["machine"]),
            fitted=str(d["fitted"]), kinds=kinds,
            call=_coefficients("call", d["call"], CALL_FEATURES),
            fuses={a: tuple(p) for a, p in fuses.items()},
            cache_bytes=int(_number("'cache_bytes'", d.get("cache_bytes", 16 * 2 ** 20),
                                    positive=True)),
            scale=_number("'scale'", d.get("scale", 1.0), positive=True),
            per_op=_number("'per_op'", d.get("per_op", 0.0)),
            designed_set=d.get("designed_set", {}), info=d.get("info", {}), source=source,
            cpu={"model": cpu.get("model", ""), "isa": list(cpu.get("isa", []))} if cpu else {})
    except LatencyModelError as e:
        raise LatencyModelError(f"{where}: {e}") from None


def load(path) -> LatencyModel:
    """Read and check a model file."""
    path = os.fspath(path)
    return from_dict(read_json(path, LatencyModelError), path)


def save(model: LatencyModel, path) -> None:
    """Write atomically: a temporary file beside ``path``, then a rename."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(model.to_dict(), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def coefficients(model: LatencyModel, key: str) -> dict:
    """The coefficients of op key ``key``, or of the close key that stands in for it."""
    if key in model.kinds:
        return model.kinds[key]
    alt = FALLBACK.get(key)
    if alt is None and key.startswith("dw_k"):          # the nearest kernel, same stride
        k, s = (int(v) for v in key[4:].split("_s"))
        same = [c for c in model.kinds if c.startswith("dw_k") and c.endswith(f"_s{s}")]
        alt = min(same, key=lambda c: abs(int(c[4:].split("_s")[0]) - k), default=None)
    if alt is None or alt not in model.kinds:
        raise LatencyModelError(f"{model.source or model.backend}: no coefficients for op kind"
                                f" {key!r} (the model has {', '.join(sorted(model.kinds))})")
    return model.kinds[alt]


def op_ms(op: latency.Op, model: LatencyModel) -> float:
    """One op's milliseconds before the network-level scale."""
    coef = coefficients(model, op.key)
    feats = op.features(model.cache_bytes)
    return sum(c * feats[f] for f, c in coef.items())


def call_features(in_bytes: int, out_bytes: int, cache_bytes: int) -> dict:
    return {"const": 1.0, "in_bytes": float(in_bytes), "out_bytes": float(out_bytes),
            "in_spill": float(max(0, in_bytes - cache_bytes)),
            "out_spill": float(max(0, out_bytes - cache_bytes))}


def call_ms(model: LatencyModel, in_bytes: int, out_bytes: int) -> float:
    feats = call_features(in_bytes, out_bytes, model.cache_bytes)
    return sum(c * feats[f] for f, c in model.call.items())


def predict_ops(ops, model: LatencyModel, in_bytes: int, out_bytes: int) -> dict:
    """Milliseconds of an op list: per component, the per-call overhead, and the total."""
    by_comp: dict = {}
    for op in ops:
        ms = model.scale * op_ms(op, model) + model.per_op
        by_comp[op.component] = by_comp.get(op.component, 0.0) + ms
    call = call_ms(model, in_bytes, out_bytes)
    return {"by_component": by_comp, "call_ms": call,
            "total_ms": sum(by_comp.values()) + call, "ops": len(ops)}


def predict(spec, model: LatencyModel, g=None) -> dict:
    """Predicted ms of ``spec`` on the model's backend: ``by_component`` (the cost model's
    components), ``call_ms`` (input, output and invocation), ``total_ms``; and what the model
    is (backend, threads, machine, file)."""
    ops = latency.spec_ops(spec, model.fuses, g)
    r = predict_ops(ops, model, *latency.io_bytes(spec))
    r["by_component"] = {c: r["by_component"].get(c, 0.0) for c in COMPONENTS}
    return {"model": model.source, "backend": model.backend, "threads": model.threads,
            "machine": model.machine, "fitted": model.fitted, **r}
