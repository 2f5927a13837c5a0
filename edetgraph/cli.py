"""What every command-line front shares: argparse whose usage errors are one line, and the
first line of an error for messages. Not a command itself; no TensorFlow, nothing else of
edetgraph (the lowest layer, so that exporters, bench and the library's own commands can
all use it)."""
from __future__ import annotations

import argparse
import sys


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's text (its type name when it has none), cut to
    ``limit`` characters when given. TensorFlow's errors give their ``message``."""
    lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other refusal."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
