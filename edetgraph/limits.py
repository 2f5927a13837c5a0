"""The limits that keep hostile or careless input from turning into unbounded work: every
one has a default that names what it protects, and an environment variable to change it
(commands that read a limit also offer a flag where one input is concerned, such as
``infer --max-pixels``). Pure Python, no TensorFlow: the lowest layer, so that every other
layer reads the same values.

``short(value)`` is here too: an error message shows a value cut to a readable length,
whatever the value is (a YAML alias bomb expands to a billion strings; its repr must not).
"""
from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass

MB = 1 << 20
GB = 1 << 30


@dataclass(frozen=True)
class Limit:
    """One limit: its environment variable, its default and why the default is what it is."""
    env: str
    default: int | float
    why: str

    def value(self):
        """The limit in force: the environment variable when set (a number, ``1e9`` and
        ``2_000`` accepted), else the default. A bad value is a ValueError naming it."""
        raw = os.environ.get(self.env, "").strip()
        if not raw:
            return self.default
        try:
            number = float(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{self.env}={short(raw, 40)}: expected a number") from None
        if not number > 0:
            raise ValueError(f"{self.env}={short(raw, 40)}: must be positive")
        return int(number) if isinstance(self.default, int) else number


LIMITS = {
    "image_pixels": Limit(
        "EDETGRAPH_MAX_IMAGE_PIXELS", 64_000_000,
        "pixels of one picture, read from its header before decoding; infer holds about 30 "
        "bytes per pixel (measured: 3.2 GB at 100 MP), so 64 MP (a 50 MP camera photo "
        "fits) stays near 2 GB"),
    "archive_bytes": Limit(
        "EDETGRAPH_MAX_ARCHIVE_BYTES", 4 * GB,
        "bytes a checkpoint archive may unpack to; the largest released model (D7x, 77.6 M "
        "parameters, stored raw, EMA and momentum in float32) unpacks to about 0.9 GB"),
    "archive_ratio": Limit(
        "EDETGRAPH_MAX_ARCHIVE_RATIO", 20.0,
        "unpacked / packed size of an archive over 64 MB; float32 weights barely compress "
        "(about 1.1x), a run of zeros compresses 1000x"),
    "spec_bytes": Limit(
        "EDETGRAPH_MAX_SPEC_BYTES", 1 * MB,
        "size of a spec or settings file; the largest shipped one is under 2 KB"),
    "yaml_nodes": Limit(
        "EDETGRAPH_MAX_YAML_NODES", 100_000,
        "values in a YAML document once its aliases are expanded; a shipped spec has under "
        "200, an alias bomb of 400 bytes a billion"),
    "graph_nodes": Limit(
        "EDETGRAPH_MAX_GRAPH_NODES", 5_000,
        "backbone blocks, head repeats, or feature-network fusion nodes (nodes per cell x "
        "repeats); D7x has 55 blocks and 64 fusion nodes"),
    "params": Limit(
        "EDETGRAPH_MAX_PARAMS", 2_000_000_000,
        "parameters of a model, from the cost model before any variable exists; D7x has "
        "77.6 M, 2 G parameters are 8 GB of float32 before gradients and EMA"),
    "activation_bytes": Limit(
        "EDETGRAPH_MAX_ACTIVATION_BYTES", 64 * GB,
        "float32 outputs of every convolution for one image, from the cost model (what "
        "a training step keeps for the backward pass, at least); D7x at 1536 px needs 10.2 GB"),
}


def limit(name: str):
    """The value in force of limit ``name`` (a key of ``LIMITS``)."""
    return LIMITS[name].value()


def override_hint(name: str) -> str:
    """How to change a limit, for the end of an error message."""
    return f"set {LIMITS[name].env} to raise the limit"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def short(value, width: int = 120) -> str:
    """``repr(value)`` cut to at most ``width`` characters, without ever building the whole
    repr (a deeply nested or aliased value, or a 50 MB string, costs no more than a small
    one)."""
    text = repr(value[:width + 1]) if isinstance(value, str) else _REPR.repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def human_bytes(n: float) -> str:
    """``1.5 GB``, ``640 MB``, ``12 KB``: sizes in error messages."""
    for unit, size in (("TB", 1 << 40), ("GB", GB), ("MB", MB), ("KB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
