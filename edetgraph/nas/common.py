"""What the search's stages share: its error, its progress line and atomic writes."""
from __future__ import annotations

import hashlib
from pathlib import Path

from edetgraph.files import json_text, write_text


class SearchError(Exception):
    """A request the search cannot do; the message is one line naming what is wrong."""


def say(msg: str) -> None:
    print(f"[search] {msg}", flush=True)


def write_atomic(path: Path, text: str) -> None:
    """The whole text at ``path`` or nothing (a temporary name, then a rename)."""
    write_text(path, text)


def write_json(path: Path, value) -> None:
    write_atomic(path, json_text(value, indent=1, sort_keys=True) + "\n")


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


