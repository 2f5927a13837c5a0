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
import fcntl
import json
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from edetgraph.cli import printable
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
    except RecursionError:   # valid JSON nested thousands deep
        raise error(f"{path}: JSON nested too deeply to be one of ours") from None


def json_text(value, **dump_options) -> str:
    """``json.dumps`` that always writes valid JSON: a non-finite float (a NaN loss, a NaN
    box from broken weights) becomes ``null``, where plain ``json.dumps`` writes the bare
    ``NaN`` / ``Infinity`` no JSON parser but Python's accepts."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v
    return json.dumps(finite(value), allow_nan=False, **dump_options)


def cache_dir() -> Path:
    """edetgraph's cache: ``$EDETGRAPH_CACHE``, else ``~/.cache/edetgraph`` (the built-in
    dataset, unpacked checkpoint archives)."""
    root = os.environ.get("EDETGRAPH_CACHE") or Path.home() / ".cache" / "edetgraph"
    return Path(root)


class OutputRefused(OSError):
    """An output name that holds something the writer was not asked to replace (a folder
    where a file goes); the message is one line naming it."""

    def __str__(self):
        return self.args[0] if self.args else "output refused"


def refuse_remote(path, flag: str) -> None:
    """Raise :class:`OutputRefused` for a remote output (``gs://...``): the local writers
    would make a folder named ``gs:`` and report the remote name. (``train --model-dir``
    writes through TensorFlow's file system and takes remote paths.)"""
    if "://" in os.fspath(path):
        raise OutputRefused(f"{flag} {os.fspath(path)}: this command writes local files only; "
                            "write to a local path and copy it (e.g. gsutil cp)")


def is_real_folder(path) -> bool:
    """A folder at ``path`` itself (a symlink to one is a link, which a rename replaces)."""
    return os.path.isdir(path) and not os.path.islink(path)


def refuse_folder(path, what: str = "a file") -> None:
    """Raise :class:`OutputRefused` when ``path`` is an existing folder: a writer of a file
    never removes a folder the user keeps there (e.g. ``model.onnx/`` holding their files)."""
    if is_real_folder(path):
        raise OutputRefused(f"{os.fspath(path)}: is an existing folder; refusing to replace it "
                            f"with {what} (move it away or choose another name)")


def stage_dir(path) -> str:
    """A new private folder beside ``path`` (``.NAME.<random>.partial``, mode 0700, created
    exclusively by ``mkdtemp``): what is written inside cannot be a link someone planted, as
    a fixed or a created-then-unlinked temporary name could be."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    return tempfile.mkdtemp(prefix=f".{name}.", suffix=PARTIAL, dir=folder)


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
    """Yield a temporary path beside ``path`` (inside a private :func:`stage_dir`); rename it
    to ``path`` when the block ends normally, remove it otherwise (an error,
    KeyboardInterrupt, SystemExit). The writer may make a file or a folder there. An
    existing file or symlink at ``path`` is replaced (the link itself, never its target);
    an existing folder is refused before the block runs (:func:`refuse_folder`)."""
    refuse_folder(path)
    stage = stage_dir(path)
    tmp = os.path.join(stage, os.path.basename(os.path.abspath(os.fspath(path))))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        remove(stage)


@contextlib.contextmanager
def atomic_dir(path):
    """Like :func:`atomic_path` for a folder that may already exist: the block fills a new
    folder at a temporary name; when it ends normally an existing folder at ``path`` is
    moved aside, the new one renamed into place and the old one removed, so ``path`` is
    always either the old folder whole or the new one whole (a kill between the two renames
    leaves the old one in a hidden ``.partial`` folder). On an error the new folder is
    removed and the old one stays as it was. Only for folders the program owns (a dataset
    in its cache): it replaces the whole folder."""
    stage = stage_dir(path)
    tmp = os.path.join(stage, "new")
    try:
        yield tmp
        if is_real_folder(path):
            old = os.path.join(stage, "old")
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
        else:
            os.replace(tmp, path)
    finally:
        remove(stage)


class FolderBusy(RuntimeError):
    """Another live process holds the folder's one-writer lock; one line naming it."""


_HELD: dict = {}   # folder -> open lock file: the lock lasts as long as the process


def lock_folder(folder, what: str) -> None:
    """Make this process the one writer of ``folder`` (created if missing): an exclusive
    ``flock`` on its ``.lock`` file, held until :func:`release_folder` or the process ends.
    The kernel drops the lock when the holder dies, even by ``kill -9``, so a killed run
    never leaves it stuck; the file's text only says who holds it. Raises
    :class:`FolderBusy` naming the holder (pid, host, start time) when another live process
    has it, :class:`OutputRefused` when ``.lock`` is a link or cannot be opened."""
    folder = os.path.abspath(os.fspath(folder))
    if folder in _HELD:
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise FolderBusy(f"{folder}: another {what} is writing there "
                             f"({printable(holder.splitlines()[0]) if holder else 'holder unknown'})"
                             "; wait for it to end, or use another folder") from None
        try:   # the file may have been released and removed between our open and our lock
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
    _HELD[folder] = fd


def _open_lock(path: str) -> int:
    try:   # O_NOFOLLOW: a planted link is refused, never written through
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise OutputRefused(f"{path}: cannot open the folder's lock file "
                            f"({e.strerror or e}); remove it if it is a link") from None


def release_folder(folder) -> None:
    """Give up :func:`lock_folder`'s lock and remove the lock file (before unlocking, so a
    waiter never locks a file that is gone: it checks, and retries on the new one)."""
    fd = _HELD.pop(os.path.abspath(os.fspath(folder)), None)
    if fd is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(os.path.abspath(os.fspath(folder)), ".lock"))
        os.close(fd)


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
