"""Loading and writing EfficientDet checkpoints by variable name.

Two on-disk formats are read, and the format is detected from the file:
- ``name``: TF1 name-based checkpoints in the released layout (``efficientdet-dN/model``),
  keys are variable names, optionally with ``<name>/ExponentialMovingAverage`` shadows;
- ``object``: edetgraph's own ``tf.train.Checkpoint`` (see `save_checkpoint`), whose object
  graph records the same names, so both formats reduce to one ``name -> entry`` map and
  loading is a dictionary lookup per variable.

Everything is read and checked before the first variable is assigned, so a refused load
leaves the model untouched.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2 as pb

from edetgraph.checkpoints.archive import CheckpointError, extract_archive, resolve_checkpoint
from edetgraph.checkpoints.integrity import model_held, older_checkpoints
from edetgraph.files import atomic_path

__all__ = ["CheckpointError", "LoadReport", "Mismatch", "resolve_checkpoint", "extract_archive",
           "read_entries", "load_checkpoint", "check_readable", "save_checkpoint",
           "write_released"]

EMA_SUFFIX = "/ExponentialMovingAverage"
GLOBAL_STEP = "global_step"
HEAD_PREFIXES = ("class_net/", "box_net/")
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_MODES = ("strict", "finetune", "lenient")
LABELS_KEY = "labels/.ATTRIBUTES/VARIABLE_VALUE"   # training's checkpoints: the class names


@dataclasses.dataclass(frozen=True)

class Mismatch:
    """A variable whose checkpoint entry has another shape or dtype."""
    name: str
    key: str
    checkpoint_shape: tuple
    variable_shape: tuple
    checkpoint_dtype: str
    variable_dtype: str

    def __str__(self) -> str:
        ck = f"{list(self.checkpoint_shape)} {self.checkpoint_dtype}"
        var = f"{list(self.variable_shape)} {self.variable_dtype}"
        return f"{self.name}: checkpoint {ck} ({self.key}) vs variable {var}"


@dataclasses.dataclass
class LoadReport:
    """What `load_checkpoint` did. Names are variable names (without ``:0``)."""
    prefix: str
    format: str                     # "name" (TF1, released layout) or "object" (edetgraph's own)
    mode: str
    used_ema: bool
    requested: int = 0              # number of variables asked for
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)      # keys looked for, absent from the file
    unexpected: list = dataclasses.field(default_factory=list)   # file entries no variable wants
    mismatched: list = dataclasses.field(default_factory=list)   # [Mismatch]
    skipped: list = dataclasses.field(default_factory=list)      # not assigned (missing or mismatched)
    ignored: list = dataclasses.field(default_factory=list)      # e.g. global_step
    ema_fallback: list = dataclasses.field(default_factory=list)  # EMA used, but this one read raw

    def summary(self, limit: int = 10) -> str:
        """Human-readable multi-line account, listing at most `limit` names per category."""
        src = "EMA shadows" if self.used_ema else "raw values"
        lines = [f"checkpoint {self.prefix} ({self.format}-based), mode {self.mode}, {src}",
                 f"loaded {len(self.loaded)}/{self.requested} variables; missing {len(self.missing)}, "
                 f"mismatched {len(self.mismatched)}, skipped {len(self.skipped)}, "
                 f"unexpected {len(self.unexpected)}, ignored {len(self.ignored)}"]
        for title, items in (("missing", self.missing), ("mismatched", self.mismatched),
                             ("skipped", self.skipped), ("unexpected", self.unexpected),
                             ("ignored", self.ignored), ("read raw (no EMA shadow)", self.ema_fallback)):
            if items:
                more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
                lines.append(f"  {title}: " + "; ".join(str(i) for i in items[:limit]) + more)
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Entry:
    key: str        # the key inside the file
    shape: tuple
    dtype: tf.DType


# What TensorFlow's checkpoint reader raises for a truncated, corrupt or missing file (a
# truncated data shard surfaces as IndexError, not as an OpError).
_READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, RuntimeError, OSError)


def _unreadable(prefix: str, error: BaseException, what: str = "checkpoint",
                older: bool = True) -> CheckpointError:
    """One line for a checkpoint that cannot be read, naming (``older``) an older one
    beside it."""
    text = str(getattr(error, "message", None) or error).strip().splitlines()
    others = older_checkpoints(prefix) if older else []
    hint = f"; {others[0]} is there too (pass it as the prefix)" if others else ""
    return CheckpointError(f"{prefix}: cannot read {what} (truncated or corrupt?): "
                           f"{text[0] if text else type(error).__name__}{hint}")


def _open_reader(prefix: str, older: bool = True):
    """The checkpoint's reader and what it holds (``read_entries``); CheckpointError when
    either cannot be read."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        return reader, read_entries(reader)
    except _READ_ERRORS as e:
        raise _unreadable(prefix, e, older=older) from e


def check_readable(prefix: str) -> None:
    """Read every tensor of a checkpoint once (TensorFlow checks each one's length and
    checksum as it reads); CheckpointError naming what is damaged. Variant tensors (a
    saved input iterator) have no value to read here; restoring them reads them."""
    reader, _ = _open_reader(prefix, older=False)
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if dtype == tf.variant:
            continue
        try:
            reader.get_tensor(key)
        except _READ_ERRORS as e:
            raise _unreadable(prefix, e, f"{key!r}", older=False) from e


def read_entries(reader) -> tuple[str, dict]:
    """``(format, {released-style name: _Entry})`` for an open checkpoint reader.

    Object-based checkpoints written by `save_checkpoint` are mapped back to released names:
    ``variables/<name>`` -> name, ``ema/<name>`` -> ``<name>/ExponentialMovingAverage``.
    """
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    if _OBJECT_GRAPH_KEY not in shapes:
        return "name", {k: _Entry(k, tuple(shapes[k]), dtypes[k]) for k in shapes}
    keys = _object_keys(reader.get_tensor(_OBJECT_GRAPH_KEY))
    return "object", {name: _Entry(k, tuple(shapes[k]), dtypes[k]) for name, k in keys.items()}


def _object_keys(graph_bytes: bytes) -> dict:
    graph = pb.TrackableObjectGraph()
    graph.ParseFromString(graph_bytes)
    nodes = graph.nodes

    def value_key(node_id):
        attrs = [a for a in nodes[node_id].attributes if a.name == "VARIABLE_VALUE"]
        return attrs[0].checkpoint_key if attrs else None

    root = {c.local_name: c.node_id for c in nodes[0].children}
    if "variables" not in root:
        raise CheckpointError("object-based checkpoint without a 'variables' dict (not written by "
                              "edetgraph.checkpoints.checkpoint.save_checkpoint); children: " + ", ".join(sorted(root)))
    out = {}
    for group, suffix in (("variables", ""), ("ema", EMA_SUFFIX)):
        for child in nodes[root[group]].children if group in root else ():
            key = value_key(child.node_id)
            if key:
                out[child.local_name + suffix] = key
    if GLOBAL_STEP in root and value_key(root[GLOBAL_STEP]):
        out[GLOBAL_STEP] = value_key(root[GLOBAL_STEP])
    return out


def _normalise(variables: dict) -> dict:
    return {(k[:-2] if k.endswith(":0") else k): v for k, v in variables.items()}


def _choose_ema(entries: dict, names, use_ema) -> bool:
    if use_ema not in ("auto", True, False):
        raise ValueError(f"use_ema must be 'auto', True or False, not {use_ema!r}")
    if use_ema == "auto":
        return any(n + EMA_SUFFIX in entries for n in names)
    return bool(use_ema)


def _pick_key(name: str, entries: dict, used_ema: bool, use_ema) -> tuple[str, bool]:
    """(key to read, whether it is a raw fallback) for one variable."""
    if not used_ema:
        return name, False
    shadow = name + EMA_SUFFIX
    if shadow not in entries and use_ema == "auto" and name in entries:
        return name, True
    return shadow, False


def _plan(entries: dict, variables: dict, use_ema, report: LoadReport) -> list:
    """Pair each variable with its entry (one lookup each); fill missing/mismatched/unexpected."""
    pairs, consumed = [], set()
    for name, var in variables.items():
        key, fallback = _pick_key(name, entries, report.used_ema, use_ema)
        consumed.update((name, name + EMA_SUFFIX))
        entry = entries.get(key)
        if entry is None:
            report.missing.append(key)
            continue
        if fallback:
            report.ema_fallback.append(name)
        vshape, vdtype = tuple(var.shape.as_list()), var.dtype.base_dtype
        if entry.shape != vshape or entry.dtype != vdtype:
            report.mismatched.append(Mismatch(name, key, entry.shape, vshape, entry.dtype.name, vdtype.name))
            continue
        pairs.append((name, var, entry))
    for key in sorted(entries):
        if key not in consumed:
            (report.ignored if key == GLOBAL_STEP else report.unexpected).append(key)
    return pairs


def _refuse(report: LoadReport, head_prefixes: tuple) -> list:
    """Names that make this load fail under `report.mode` (none in lenient mode)."""
    bad = [n for n in report.missing] + [m.name for m in report.mismatched]
    if report.mode == "lenient":
        return []
    if report.mode == "finetune":
        return [n for n in bad if not n.startswith(head_prefixes)]
    return bad


def load_checkpoint(path, variables: dict, mode: str = "strict", use_ema="auto",
                    extract_dir=None, head_prefixes: tuple = HEAD_PREFIXES) -> LoadReport:
    """Assign checkpoint values to `variables` ({name: tf.Variable}) by name; return a LoadReport.

    `path`: archive, folder or prefix (see `resolve_checkpoint`). `use_ema`: 'auto' reads
    ``<name>/ExponentialMovingAverage`` when the file has shadows for these variables (a
    variable without one is read raw and listed in `ema_fallback`), True requires a shadow
    for every variable (else it counts as missing), False reads raw values. `mode`: 'strict' fails on any missing or
    mismatched variable; 'finetune' skips missing/mismatched variables under
    `head_prefixes` (e.g. class-predict for another num_classes) and fails on any other;
    'lenient' only reports. ``global_step`` is ignored. Nothing is assigned when it fails.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
    variables = _normalise(variables)
    prefix = resolve_checkpoint(path, extract_dir)
    reader, (fmt, entries) = _open_reader(prefix)
    report = LoadReport(prefix, fmt, mode, _choose_ema(entries, variables, use_ema), len(variables))
    pairs = _plan(entries, variables, use_ema, report)
    report.skipped = sorted({n.removesuffix(EMA_SUFFIX) for n in report.missing} | {m.name for m in report.mismatched})
    refused = _refuse(report, head_prefixes)
    if refused:
        raise CheckpointError(_refusal(report, refused, use_ema is True and not any(
            k.endswith(EMA_SUFFIX) for k in entries)))
    values = []
    for name, var, entry in pairs:
        try:
            values.append(reader.get_tensor(entry.key))
        except _READ_ERRORS as e:
            raise _unreadable(prefix, e, f"{entry.key!r}") from e
    for (name, var, _), value in zip(pairs, values):
        var.assign(value)
        report.loaded.append(name)
    return report


def _refusal(report: LoadReport, refused: list, no_shadows: bool, limit: int = 20) -> str:
    details = {m.name: str(m) for m in report.mismatched}
    listed = "\n".join(f"  {details.get(n, n + ' (missing)')}" for n in refused[:limit])
    more = f"\n  ... (+{len(refused) - limit} more)" if len(refused) > limit else ""
    hint = ("\n  (use_ema=True, but the file has no ExponentialMovingAverage shadows; "
            "use use_ema='auto' or False)") if no_shadows else ""
    # The first line stands alone (commands print only it): the count, the model the
    # checkpoint holds when its folder says, and the first variable at fault.
    held = model_held(report.prefix)
    held = f"; it holds {held}, says the spec.yaml beside it" if held else ""
    first = details.get(refused[0], refused[0] + " (missing)")
    return (f"{report.prefix}: refusing to load in {report.mode} mode: {len(refused)} variable(s) "
            f"missing or mismatched{held}; first {first}\n{listed}{more}{hint}\n"
            f"{report.summary(limit=5)}")


def save_checkpoint(variables: dict, prefix, step=None, ema: dict | None = None) -> str:
    """Write edetgraph's own object-based checkpoint at `prefix`; returns the prefix.

    Layout: ``variables`` and ``ema`` are dicts keyed by variable name (names survive in the
    object graph, which `load_checkpoint` maps back), ``global_step`` an int64 scalar.
    It can also be restored with ``tf.train.Checkpoint(variables=same_dict).read(prefix)``.
    """
    variables = _normalise(variables)
    kwargs = {"variables": dict(variables)}
    if ema:
        ema = _normalise(ema)
        unknown = sorted(set(ema) - set(variables))
        if unknown:
            raise ValueError(f"ema names without a variable: {unknown[:5]}")
        kwargs["ema"] = dict(ema)
    if step is not None:
        kwargs[GLOBAL_STEP] = tf.Variable(int(step), dtype=tf.int64, trainable=False)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    return tf.train.Checkpoint(**kwargs).write(os.fspath(prefix))


def _as_array(v) -> np.ndarray:
    return v.numpy() if hasattr(v, "numpy") else np.asarray(v)


def write_released(variables: dict, out_dir, ema: dict | None = None, global_step=0,
                   tar_gz: str | None = None) -> str:
    """Write a TF1 name-based checkpoint in the released layout; returns its prefix.

    `out_dir` gets ``checkpoint`` (naming ``model`` relatively), ``model.index`` and
    ``model.data-00000-of-00001``; keys are the given names (dtypes as given), plus
    ``<name>/ExponentialMovingAverage`` for each `ema` entry and an int64 ``global_step``
    (omitted if None). With `tar_gz`, also packs the folder (under its own name) there.
    """
    arrays = {n: _as_array(v) for n, v in _normalise(variables).items()}
    for name, value in _normalise(ema or {}).items():
        if name not in arrays:
            raise ValueError(f"ema entry {name!r} has no raw variable")
        value = _as_array(value)
        if value.shape != arrays[name].shape:
            raise ValueError(f"ema entry {name!r} has shape {value.shape}, raw {arrays[name].shape}")
        arrays[name + EMA_SUFFIX] = value
    if global_step is not None:
        if GLOBAL_STEP in arrays:
            raise ValueError("'global_step' is given both as a variable and as global_step")
        arrays[GLOBAL_STEP] = np.asarray(global_step, np.int64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = str(out / "model")
    names = sorted(arrays)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(arrays[n]) for n in names])
    (out / "checkpoint").write_text('model_checkpoint_path: "model"\nall_model_checkpoint_paths: "model"\n')
    if tar_gz:
        _pack(out, Path(tar_gz))
    return prefix


def _pack(folder: Path, archive: Path) -> None:
    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    archive.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        tar.add(folder, arcname=folder.name, filter=anonymous)   # what `tar czf` uses


def checkpoint_labels(prefix) -> dict | None:
    """The class names a training checkpoint carries (``{id: name}``), None when it has
    none (released checkpoints, or ones written before checkpoints carried them)."""
    try:
        reader = tf.train.load_checkpoint(os.fspath(prefix))
        if not reader.has_tensor(LABELS_KEY):
            return None
        value = reader.get_tensor(LABELS_KEY)
        data = json.loads(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    except (tf.errors.OpError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {int(k): str(v) for k, v in data.items() if str(k).isdigit()} or None

