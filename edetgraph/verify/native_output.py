"""What native code (a runtime's C++) prints, captured below Python's streams.

ncnn prints its load errors on file descriptor 2, MNN its start-up notices on 1; neither
goes through ``sys.stdout``/``sys.stderr``, so the runners redirect the descriptor itself.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile

_PYTHON_STREAMS = {1: "stdout", 2: "stderr"}
_LIBC = ctypes.CDLL(None)    # the process's own C library: its stdio buffers


@contextlib.contextmanager
def captured_fd(fd: int, lines: list):
    """Run the block with what is written to file descriptor ``fd`` captured; its non-blank
    lines (stripped) are appended to ``lines`` when the block ends, whatever happened."""
    stream = getattr(sys, _PYTHON_STREAMS.get(fd, ""), None)
    if stream is not None:     # what Python printed before the block goes where it was meant to
        stream.flush()
    _LIBC.fflush(None)
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), fd)
        try:
            yield
        finally:
            _LIBC.fflush(None)   # C stdio holds back what it prints to a file
            os.dup2(saved, fd)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="backslashreplace")
            lines += [ln.strip() for ln in text.splitlines() if ln.strip()]
