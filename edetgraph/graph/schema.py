"""Typed YAML: plain data checked against a frozen dataclass, for model specs and training
settings alike.

:func:`build` walks a mapping against the dataclass's fields and their type hints; an
unknown key, a missing required key, a wrong type or a list of the wrong length raises the
caller's error class with a message naming the key path and the value (``fpn.channels:
expected an integer, got 'wide'``). :func:`apply_overrides` applies ``key.path=value``
strings to the raw mapping *before* validation, so they get exactly the same checks, and
:func:`read_yaml` reads a file safely. No TensorFlow.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

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
            fail(error, path, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]", error) for i, v in enumerate(value))
        if len(value) != len(args):
            fail(error, path, f"expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{path}[{i}]", error)
                     for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            fail(error, path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(error, path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.match(value):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(error, path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail(error, path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"field type {tp} not handled")  # a bug in the dataclass, not the file


def build(cls: type, data: Any, path: str, error: type) -> Any:
    """An instance of dataclass ``cls`` from ``data``; ``source`` fields are left to the
    caller (they record where the data came from, not what it says)."""
    if not isinstance(data, dict):
        fail(error, path, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    for key in data:
        if key not in known:
            fail(error, f"{path}.{key}" if path else str(key),
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
            raise error(f"--set {item!r}: expected key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise error(f"--set {item!r}: value is not valid YAML ({e.problem})") from None
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise error(f"--set {item!r}: {'.'.join(parts[:depth + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data


def read_yaml(path: Path, error: type) -> Any:
    """The YAML content of ``path`` (safe loading); unreadable or invalid YAML raises
    ``error`` naming the file and the line."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
