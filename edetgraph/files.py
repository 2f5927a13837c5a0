"""Writing files so that a failed, full or killed run leaves nothing that looks complete.

Every output is written under a hidden temporary name in its own folder (same file system,
so the final ``os.replace`` is atomic) and renamed only once it is whole; on any error the
temporary is removed. A full disk is one line naming the folder. Pure Python, no
TensorFlow: the lowest layer, used by every writer above it.

    with atomic_path("out/detections.json") as tmp:
        Path(tmp).write_text(text)          # out/detections.json appears only now
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from edetgraph.limits import human_bytes

PARTIAL = ".partial"   # the suffix of every temporary a writer leaves while it works


def read_json(path, error: type[Exception]):
    """The JSON value in ``path``; a missing/unreadable file or bad JSON raises ``error``
    with one line naming the file (and the line of a syntax error)."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise error(f"{path}: cannot read it: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not valid JSON (not UTF-8 text)") from None


def cache_dir() -> Path:
    """edetgraph's cache: ``$EDETGRAPH_CACHE``, else ``~/.cache/edetgraph`` (the built-in
    dataset, unpacked checkpoint archives)."""
    root = os.environ.get("EDETGRAPH_CACHE") or Path.home() / ".cache" / "edetgraph"
    return Path(root)


def temp_path(path) -> str:
    """A fresh hidden name beside ``path`` (``.NAME.<random>.partial``); nothing is created."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=PARTIAL, dir=folder)
    os.close(fd)
    os.unlink(tmp)
    return tmp


def remove(path) -> None:
    """Remove a file or a folder tree if it exists (no error if it does not)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def make_dirs(folder) -> list:
    """Create ``folder`` and its missing parents; return those created, deepest first (for
    :func:`remove_empty`, so a failure can leave the tree as it found it)."""
    created, p = [], Path(folder)
    while not p.exists():
        created.append(p)
        p = p.parent
    Path(folder).mkdir(parents=True, exist_ok=True)
    return created


def remove_empty(created: list) -> None:
    """Remove the folders :func:`make_dirs` created, deepest first, while they are empty."""
    for p in created:
        try:
            p.rmdir()
        except OSError:     # not empty (something was kept there) or already gone
            return


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block ends
    normally, remove it otherwise (an error, KeyboardInterrupt, SystemExit). The writer may
    make a file or a folder there; an existing file at ``path`` is replaced at once."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Like :func:`atomic_path` for a folder that may already exist: the block fills a new
    folder at a temporary name; when it ends normally an existing folder at ``path`` is
    moved aside, the new one renamed into place and the old one removed, so ``path`` is
    always either the old folder whole or the new one whole (a kill between the two renames
    leaves the old one at a hidden ``.partial`` name). On an error the new folder is removed
    and the old one stays as it was."""
    tmp = temp_path(path)
    try:
        yield tmp
        if os.path.isdir(path) and not os.path.islink(path):
            old = temp_path(path)
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def free_bytes(path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(os.path.abspath(os.fspath(path)))
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def is_disk_full(error: BaseException) -> bool:
    """Whether an error (OSError, or TensorFlow's errors, which carry the C message) means
    the disk or the quota is full."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(getattr(error, "message", None) or error)
    return "No space left on device" in text or "Disk quota exceeded" in text


def disk_full_message(folder) -> str:
    """One line for a full disk: the folder and what is left there."""
    try:
        left = f" ({human_bytes(free_bytes(folder))} free)"
    except OSError:
        left = ""
    return f"{folder}: no space left on the device{left}; free some space or write elsewhere"
