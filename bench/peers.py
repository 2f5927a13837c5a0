"""``--peer NAME=FILE``: foreign models timed beside ours. Parsed without TensorFlow, so a
bad peer is refused before anything starts."""
from __future__ import annotations

import os

from bench.config import TABLE


def parse_peers(items) -> dict:
    """``["effdet=peers/x.onnx", ...]`` -> ``{name: path}``; ValueError names a bad one."""
    peers = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--peer {item!r}: expected NAME=FILE.onnx|.tflite")
        if name in TABLE or name in peers:
            raise ValueError(f"--peer {item!r}: the name {name!r} is taken")
        if not os.path.isfile(path):
            raise ValueError(f"--peer {item!r}: no such file")
        if not path.endswith((".onnx", ".tflite")):
            raise ValueError(f"--peer {item!r}: give an .onnx or .tflite file")
        peers[name] = path
    return peers
