"""What every command-line front shares: argparse whose usage errors are one line, the
first line of an error for messages, and TensorFlow imported without its start-up lines.
Not a command itself; no TensorFlow until :func:`quiet_tensorflow` is called, nothing else
of edetgraph (the lowest layer, so that exporters, bench and the library's own commands can
all use it)."""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import importlib.abc
import os
import re
import sys
import tempfile
import threading

# Lines native libraries write straight to file descriptor 2 on every run, though nothing is
# wrong; no log level reaches them (they are written before, or outside, any logging set-up):
# - while TensorFlow loads: absl's notice that logging is not initialised yet, oneDNN being on
#   (its default on x86), and the CPU features this build does not use;
# - LiteRT / tf.lite, when an interpreter first applies its default delegate;
# - TF's int8 quantizer, once per quantizing conversion (a bare fprintf of its settings).
_NATIVE_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\."
    r"|I\d{4} [\d:.]+ +\d+ cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
    r"output_inference_type: \w+$")


# File descriptor 2 is the process's: two threads swapping it at once would leave it pointing
# at a closed capture file, so one block at a time (re-entrant: blocks may nest).
_FD2 = threading.RLock()


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
    with quiet_native(), _without_keras_extras():
        import tensorflow  # noqa: F401  # deferred: only commands that need TensorFlow load it


class _KerasExtrasFinder(importlib.abc.MetaPathFinder):
    """Refuses the optional packages Keras 3 tries while it loads (``_KERAS_EXTRAS``)."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _KERAS_EXTRAS:
            raise ImportError(f"{name} is not loaded while TensorFlow starts")
        return None


# TensorFlow 2.21 imports Keras 3 as it loads (``tf.keras``), and Keras imports these when
# they are installed (its scikit-learn wrappers; its image-gallery plot): scikit-learn comes
# with the OpenVINO extra (nncf), matplotlib with the plot extra. Together about a fifth of
# TensorFlow's start-up CPU time, in every command, for Keras features edetgraph never uses.
# Keras takes the ImportError as "not installed"; once TensorFlow is loaded, both import as
# usual (the plots and nncf load them themselves).
_KERAS_EXTRAS = ("sklearn", "matplotlib")


@contextlib.contextmanager
def _without_keras_extras():
    if any(name in sys.modules for name in _KERAS_EXTRAS):   # already paid for: no change
        yield
        return
    finder = _KerasExtrasFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


@contextlib.contextmanager
def quiet_native():
    """Run the block with what native code writes to file descriptor 2 captured, then replay
    on stderr every line of it except the known notices of native libraries
    (``_NATIVE_NOISE``): a real error or warning from C++ still reaches the user, once the
    block ends. Python's own writes to ``sys.stderr`` (progress lines, warnings) are not
    captured: they show as they are written.

    For native calls that print such a notice: TensorFlow's import, an interpreter's first
    allocation, a TFLite conversion. ``TF_CPP_MIN_LOG_LEVEL=0`` (asking for TensorFlow's own
    lines) turns the filter off.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0":
        yield
        return
    with _FD2:
        yield from _captured_fd2()


def _captured_fd2():
    python_stderr, lines = sys.stderr, []
    python_stderr.flush()
    with open(os.dup(2), "w", buffering=1, errors="backslashreplace") as live:
        if _writes_to_fd2(python_stderr):   # Python's own lines still show as written
            sys.stderr = live
        try:
            with captured_fd(2, lines, strip=False):  # the notices come from C++, below sys.stderr
                yield
        finally:
            sys.stderr = python_stderr
    kept = [line for line in lines if not _NATIVE_NOISE.match(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)


@contextlib.contextmanager
def captured_fd(fd: int, lines: list, strip: bool = True):
    """Run the block with what is written to file descriptor ``fd`` (1 or 2) captured, below
    Python's streams, where native code (a runtime's C++) writes; its lines are appended to
    ``lines`` when the block ends, whatever happened (``strip``: stripped, blank ones
    dropped)."""
    stream = getattr(sys, _PYTHON_STREAMS.get(fd, ""), None)
    if stream is not None:     # what Python printed before the block goes where it was meant to
        stream.flush()
    _libc().fflush(None)
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            yield
        finally:
            _libc().fflush(None)   # C stdio holds back what it prints to a file
            os.dup2(saved, fd)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="backslashreplace").splitlines()
            lines += [ln.strip() for ln in text if ln.strip()] if strip else text


_PYTHON_STREAMS = {1: "stdout", 2: "stderr"}


@functools.lru_cache(maxsize=1)
def _libc():
    """The process's own C library (its stdio buffers)."""
    return ctypes.CDLL(None)


def _writes_to_fd2(stream) -> bool:
    """Whether ``stream`` writes to file descriptor 2 (not, e.g., a test's capture buffer)."""
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is an OSError
        return False
