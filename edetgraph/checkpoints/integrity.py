"""What can be said about a checkpoint without reading its tensors: whether its data files
are all there, which other checkpoints sit beside it, and which model it holds (the
``spec.yaml`` training writes into its model folder). Pure Python, no TensorFlow, so a
command can refuse a broken checkpoint before TensorFlow starts, and a refusal can name
the model a checkpoint holds.
"""
from __future__ import annotations

import glob
import os
import re

import yaml

from edetgraph.limits import short

_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_ALL_PATHS = re.compile(r'^\s*all_model_checkpoint_paths\s*:\s*"(.*)"\s*$', re.MULTILINE)


def missing_data_files(prefix: str) -> list[str]:
    """The data shards ``PREFIX.data-0000i-of-0000N`` that should exist and do not (all of
    ``-00000-of-00001`` when there is none at all)."""
    found = glob.glob(glob.escape(prefix) + ".data-?????-of-?????")
    counts = {int(m.group(2)) for f in found if (m := _SHARD.search(f))}
    if not counts:
        return [f"{prefix}.data-00000-of-00001"]
    count = max(counts)
    return [name for i in range(count)
            if not os.path.isfile(name := f"{prefix}.data-{i:05d}-of-{count:05d}")]


def older_checkpoints(prefix: str) -> list[str]:
    """Other prefixes the folder's ``checkpoint`` file lists, newest first (training keeps
    a few), that still have their index file."""
    folder = os.path.dirname(prefix)
    try:
        with open(os.path.join(folder, "checkpoint")) as f:
            listed = _ALL_PATHS.findall(f.read())
    except OSError:
        return []
    out = []
    for name in reversed(listed):
        cand = name if os.path.isabs(name) else os.path.join(folder, name)
        if os.path.normpath(cand) != os.path.normpath(prefix) and os.path.isfile(cand + ".index"):
            out.append(cand)
    return out


def saved_spec(folder: str) -> dict | None:
    """The ``spec.yaml`` training saved in ``folder`` (a mapping), or None."""
    path = os.path.join(folder, "spec.yaml")
    try:
        if os.path.getsize(path) > 1 << 20:     # written by training: a few hundred bytes
            return None
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError, RecursionError, ValueError):   # ValueError: not UTF-8
        return None
    return data if isinstance(data, dict) else None


def model_held(prefix: str) -> str | None:
    """``efficientdet-d0 (num_classes 90, 512x512)`` for a checkpoint whose folder holds
    training's ``spec.yaml``; None when nothing says."""
    spec = saved_spec(os.path.dirname(prefix))
    return None if spec is None else describe(spec)


def describe(spec: dict) -> str:
    """A saved spec in a few words: its name, class count and input size."""
    size = spec.get("image_size")
    size = f", {size[0]}x{size[1]}" if isinstance(size, list) and len(size) == 2 else ""
    return f"{str(spec.get('name', '?'))[:60]} (num_classes {spec.get('num_classes', '?')}{size})"


def spec_differences(saved: dict, current: dict, limit: int = 3) -> list[str]:
    """``key.path: saved -> current`` for the first ``limit`` architecture values that
    differ (the name aside: a renamed spec still fits its checkpoint)."""
    out: list[str] = []

    def walk(a, b, path):
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                if path or key != "name":
                    walk(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        elif _plain(a) != _plain(b):
            out.append(f"{path}: {short(a, 40)} there, {short(b, 40)} here")

    walk(saved, current, "")
    return out


def _plain(value):
    """Lists and tuples alike (YAML gives lists, a spec's dict has tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
