"""What every command-line front shares: argparse whose usage errors are one line, the
first line of an error for messages, and TensorFlow imported without its start-up lines.
Not a command itself; no TensorFlow until :func:`quiet_tensorflow` is called, nothing else
of edetgraph (the lowest layer, so that exporters, bench and the library's own commands can
all use it)."""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

# What TensorFlow writes to stderr while it loads, every time, though nothing is wrong:
# absl's notice that logging is not initialised yet, oneDNN being on (its default on x86),
# and the CPU features this build does not use. TF_CPP_MIN_LOG_LEVEL does not reach them
# (absl logs them before it reads any setting), so they are filtered line by line.
_STARTUP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\."
    r"|I\d{4} [\d:.]+ +\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler")


def printable(text) -> str:
    """``text`` with control characters (terminal escape sequences among them) shown as
    ``\\x1b``-style codes. Strings that come from a file (a model's metadata, its labels, a
    latency model's names) are someone else's: printed raw they could clear the screen or
    fake output lines."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


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


def quiet_tensorflow() -> None:
    """Import TensorFlow with its start-up notices kept off stderr; every other line it
    writes while loading (a real error, a warning) still reaches stderr.

    Commands call this just before their first TensorFlow import. ``TF_CPP_MIN_LOG_LEVEL``
    defaults to 2 (warnings and info off); set it to 0 to see TensorFlow's own lines,
    start-up notices included.
    """
    if not os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() == "0":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)   # the notices come from C++, below sys.stderr
        try:
            import tensorflow  # noqa: F401  # deferred: only commands that need TensorFlow load it
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if not _STARTUP_NOISE.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
