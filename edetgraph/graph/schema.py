"""Typed YAML: plain data checked against a frozen dataclass, for model specs and training
settings alike.

:func:`build` walks a mapping against the dataclass's fields and their type hints; an
unknown key, a missing required key, a wrong type or a list of the wrong length raises the
caller's error class with a message naming the key path and the value, cut short
(``fpn.channels: expected an integer, got 'wide'``). :func:`apply_overrides` applies
``key.path=value`` strings to the raw mapping *before* validation, so they get exactly the
same checks, and :func:`read_yaml` reads a file safely: its size is capped, and so is the
number of values once YAML aliases are expanded (``EDETGRAPH_MAX_SPEC_BYTES``,
``EDETGRAPH_MAX_YAML_NODES``), so a small alias bomb is refused before anything walks it.
No TensorFlow.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from edetgraph.limits import limit, override_hint, short

# YAML 1.1 reads 1e-3 (no dot) as a string; such a string in a number field is a number.
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def fail(error: type, path: str, msg: str):
    raise error(f"{path or '<root>'}: {msg}")


def _convert(tp: Any, value: Any, path: str, error: type) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
        origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, error)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            fail(error, path, f"expected a list, got {short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]", error) for i, v in enumerate(value))
        if len(value) != len(args):
            fail(error, path, f"expected {len(args)} values, got {short(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]", error)
                     for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            fail(error, path, f"expected true/false, got {short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(error, path, f"expected an integer, got {short(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.match(value):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(error, path, f"expected a number, got {short(value)}")
        # NaN passes every later range check (nan <= 0 is false) and inf overflows them:
        # neither is a setting anyone means, so both stop here, naming the key.
        if not math.isfinite(value):
            fail(error, path, f"expected a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail(error, path, f"expected a string, got {short(value)}")
        return value
    raise TypeError(f"field type {tp} not handled")  # a bug in the dataclass, not the file


def build(cls: type, data: Any, path: str, error: type) -> Any:
    """An instance of dataclass ``cls`` from ``data``; ``source`` fields are left to the
    caller (they record where the data came from, not what it says)."""
    if not isinstance(data, dict):
        fail(error, path, f"expected a mapping, got {short(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    for key in data:
        if key not in known:
            name = key[:60] if isinstance(key, str) else short(key, 60)
            fail(error, f"{path}.{name}" if path else name,
                 f"unknown key (known: {', '.join(known)})")
    kwargs = {}
    for name, f in known.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], sub, error)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            fail(error, sub, "required key is missing")
    return cls(**kwargs)


def apply_overrides(data: dict, overrides, error: type) -> dict:
    """A copy of ``data`` with ``key.path=value`` overrides applied.

    Values are parsed as YAML (``fpn.channels=96``, ``image_size=[384,640]``); a path through
    a missing mapping creates it, so the validator reports unknown keys.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise error(f"--set {short(item)}: expected key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise error(f"--set {short(item)}: value is not valid YAML ({e.problem})") from None
        except RecursionError:
            raise error(f"--set {short(item)}: value nested too deeply") from None
        check_expanded_size(value, f"--set {key.strip()[:60]}", error)
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise error(f"--set {short(item)}: {'.'.join(parts[:depth + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data


def read_yaml(path: Path, error: type) -> Any:
    """The YAML content of ``path`` (safe loading); an unreadable, oversized or invalid
    file, or one whose aliases expand past the limit, raises ``error`` naming the file."""
    cap = limit("spec_bytes")
    try:
        size = Path(path).stat().st_size
        if size > cap:
            raise error(f"{path}: {size:,} bytes, more than the {cap:,} a spec or settings "
                        f"file may have ({override_hint('spec_bytes')})")
        text = Path(path).read_text()
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a text file ({e.reason})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    except RecursionError:
        raise error(f"{path}: not valid YAML (nested too deeply)") from None
    check_expanded_size(data, str(path), error)
    return data


def check_expanded_size(value: Any, where: str, error: type) -> None:
    """Refuse YAML data with more values than the limit once its aliases are expanded.

    YAML aliases make a shared structure: 400 bytes can name a billion strings, which any
    walk over the data (validation, a copy, an error message) would expand. Sizes are
    counted once per shared object, so the count itself stays as cheap as the document.
    """
    cap = limit("yaml_nodes")
    sizes: dict[int, int] = {}

    def size(v) -> int:
        if not isinstance(v, (list, dict)):
            return 1
        if id(v) not in sizes:
            items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
            sizes[id(v)] = 1 + sum(min(size(x), cap + 1) for x in items)
        return sizes[id(v)]

    try:
        total = size(value)
    except RecursionError:
        raise error(f"{where}: nested too deeply") from None
    if total > cap:
        raise error(f"{where}: more than {cap:,} values once YAML aliases are expanded "
                    f"({override_hint('yaml_nodes')})")
