"""Finding a checkpoint prefix in whatever the user points at, and unpacking released
``efficientdet-dN.tar.gz`` archives without trusting them.

Pure Python (no TensorFlow), so archives can be vetted and unpacked before TF is imported.

Extraction policy: every member is checked before a single byte is written; only regular
files and directories are accepted (no symlinks, hardlinks, devices, fifos), with relative,
``..``-free names. The sizes the headers declare (exactly what extraction writes) are
added up as they are read: an archive that would unpack to more than
``EDETGRAPH_MAX_ARCHIVE_BYTES``, or past ``EDETGRAPH_MAX_ARCHIVE_RATIO`` times its own size,
or to more than the free space, is refused before anything is written. Archives unpack into
edetgraph's cache (``$EDETGRAPH_CACHE/checkpoints``), never beside the archive, whose folder
may be read-only or shared. Files are written into a fresh staging directory created
inside the target, then moved into place, so a failure (a full disk included) leaves
nothing behind, and never a half-extracted checkpoint a later run would pick up.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from edetgraph.checkpoints.integrity import missing_data_files, older_checkpoints
from edetgraph.files import (
    cache_dir,
    disk_full_message,
    free_bytes,
    is_disk_full,
    make_dirs,
    remove,
    remove_empty,
)
from edetgraph.files import write_text as write_atomic
from edetgraph.limits import human_bytes, limit, override_hint

_MARKER = ".edetgraph-extracted-{}.json"
_CKPT_STATE_LINE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"(.*)"\s*$', re.MULTILINE)
_CHUNK = 1 << 20
_TAR_EXTS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")
_RATIO_FROM = 64 << 20   # below this, a high expansion ratio is harmless (index files)


class CheckpointError(Exception):
    """A checkpoint (or archive) cannot be found, read or loaded; the message names the path."""


def resolve_checkpoint(path, extract_dir=None) -> str:
    """Return the checkpoint prefix (``.../model``) for `path`.

    `path` may be a tar archive (``.tar.gz``/``.tgz``/``.tar``; unpacked safely into
    `extract_dir`, default a folder of edetgraph's cache named after the archive, reused
    while the archive is unchanged), a folder (with a ``checkpoint`` file or a single
    ``*.index``, looked for up to two levels down) or its ``checkpoint`` file, a prefix, or
    a prefix's ``.index`` file. A prefix whose data files are not all there is refused.
    """
    prefix = _resolve(path, extract_dir)
    missing = missing_data_files(prefix)
    if missing:
        older = older_checkpoints(prefix)
        hint = f"; {older[0]} is there (pass it as the prefix)" if older else ""
        raise CheckpointError(f"{prefix}: its data file {os.path.basename(missing[0])} is "
                              f"missing{hint}")
    return prefix


def _resolve(path, extract_dir) -> str:
    p = Path(os.fspath(path)).expanduser()
    if p.name == "checkpoint" and p.is_file():
        p = p.parent
    if p.is_file() and (p.suffix != ".index" and not _is_data_shard(p)):
        if not (p.name.endswith(_TAR_EXTS) or tarfile.is_tarfile(p)):
            raise CheckpointError(f"{p}: not a checkpoint, a checkpoint folder or a readable tar archive")
        root = extract_archive(p, extract_dir)
        return _prefix_in_tree(root, p)
    if p.is_dir():
        return _prefix_in_tree(p, p)
    if p.suffix == ".index" and p.is_file():
        return str(p.with_suffix(""))
    if _is_data_shard(p):
        return str(p.parent / p.name.split(".data-")[0])
    if Path(str(p) + ".index").is_file():
        return str(p)
    raise CheckpointError(f"{p}: no such checkpoint prefix, folder or archive")


def _is_data_shard(p: Path) -> bool:
    return re.search(r"\.data-\d{5}-of-\d{5}$", p.name) is not None and p.is_file()


def _prefix_in_dir(d: Path) -> str | None:
    """Prefix named by `d/checkpoint`, else the single `*.index` in `d`, else None."""
    state = d / "checkpoint"
    if state.is_file():
        m = _CKPT_STATE_LINE.search(state.read_text(errors="replace"))
        if m:
            named = Path(m.group(1))
            # Files written on another machine may name an absolute path that does not
            # exist here; the shard next to the state file is the one meant.
            for cand in ((d / named) if not named.is_absolute() else named, d / named.name):
                if Path(str(cand) + ".index").is_file():
                    return str(cand)
    indexes = sorted(d.glob("*.index"))
    if len(indexes) > 1:
        names = ", ".join(i.name for i in indexes)
        raise CheckpointError(f"{d}: several checkpoints ({names}) and no usable 'checkpoint' file; pass a prefix")
    return str(indexes[0].with_suffix("")) if indexes else None


def _prefix_in_tree(root: Path, origin: Path) -> str:
    """Prefix in `root` itself, else in the one sub-folder (depth <= 2) holding a checkpoint."""
    found = _prefix_in_dir(root)
    if found:
        return found
    hits = []
    for dirpath, dirnames, _ in os.walk(root):  # os.walk does not follow symlinks
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= 2:
            dirnames[:] = []
        if depth >= 1:
            hit = _prefix_in_dir(Path(dirpath))
            if hit:
                hits.append(hit)
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise CheckpointError(f"{origin}: contains no TF checkpoint (no 'checkpoint' file or '*.index')")
    raise CheckpointError(f"{origin}: contains several checkpoints ({', '.join(hits)}); pass one prefix")


def extract_archive(archive, extract_dir=None) -> Path:
    """Safely unpack `archive`; return the folder holding its content (its single top folder
    when it has one, else the extraction folder).

    Raises CheckpointError (naming the archive) for an unreadable/truncated archive, a
    member that is a link/device or whose name is absolute or contains ``..``, an archive
    with no ``*.index`` member, one past the size limits or the free space, or a member that
    would overwrite an existing path. On failure nothing is left in the target.
    """
    archive = Path(archive).resolve()
    target = Path(extract_dir).expanduser().resolve() if extract_dir else _default_target(archive)
    marker = target / _MARKER.format(archive.name)
    stamp = _stamp(archive)
    tops = _reusable(marker, stamp, target)
    if tops:  # vetted and extracted before, archive unchanged since
        return _content_root(target, tops)
    members, tops, total = _vetted_members(archive)
    _check_space(archive, target, total)
    _drop_stale(marker, target)
    clashes = [t for t in tops if os.path.lexists(target / t)]
    if clashes:
        raise CheckpointError(
            f"{archive}: would overwrite {', '.join(str(target / c) for c in clashes)} "
            f"(left by another archive or version); remove it or choose another extract_dir")
    created = make_dirs(target)
    moved: list = []
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target))
        _write_members(archive, members, staging)
        for top in tops:
            os.rename(staging / top, target / top)
            moved.append(top)
        write_atomic(marker, json.dumps({"stamp": stamp, "tops": tops}))
    except BaseException as e:
        for top in moved:   # all or nothing: a later run must not take half as the whole
            remove(target / top)
        if isinstance(e, CheckpointError) or not isinstance(
                e, (tarfile.TarError, EOFError, zlib.error, OSError)):
            raise
        why = disk_full_message(target) if is_disk_full(e) else str(e)
        raise CheckpointError(f"{archive}: extraction into {target} failed: {why}") from e
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        remove_empty(created)
    return _content_root(target, tops)


def _check_space(archive: Path, target: Path, total: int) -> None:
    """Refuse an extraction the target's file system cannot hold (with 1 % to spare)."""
    try:
        free = free_bytes(target)
    except OSError:
        return
    if total * 1.01 > free:
        raise CheckpointError(f"{archive}: unpacks to {human_bytes(total)}, but {target} has "
                              f"only {human_bytes(free)} free")


def _content_root(target: Path, tops: list) -> Path:
    # The archive's single top folder when it has one, so other archives unpacked into the
    # same extract_dir do not make the checkpoint ambiguous.
    return target / tops[0] if len(tops) == 1 and (target / tops[0]).is_dir() else target


def _default_target(archive: Path) -> Path:
    """``$EDETGRAPH_CACHE/checkpoints/<stem>-<key>``: keyed by the archive's path, so two
    archives of one name in different folders do not share an extraction."""
    stem = archive.name
    for ext in _TAR_EXTS:
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    key = hashlib.sha256(str(archive).encode()).hexdigest()[:12]
    return cache_dir() / "checkpoints" / f"{stem}-{key}"


def _stamp(archive: Path) -> list:
    st = archive.stat()
    return [str(archive), st.st_size, st.st_mtime_ns]


def _reusable(marker: Path, stamp: list, target: Path) -> list:
    """Top-level names of a complete earlier extraction of this very archive, else []."""
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return []
    tops = saved.get("tops") or []
    ok = saved.get("stamp") == stamp and all(
        isinstance(t, str) and "/" not in t and t not in ("", ".", "..") and (target / t).exists()
        and not (target / t).is_symlink() for t in tops)
    return tops if ok else []


def _drop_stale(marker: Path, target: Path) -> None:
    """Remove what an earlier extraction of an archive with this name left (its marker
    lists it), so a re-downloaded archive replaces its own old copy and nothing else."""
    try:
        old = json.loads(marker.read_text()).get("tops", [])
    except (OSError, ValueError):
        return
    for top in old:
        p = target / top
        if top in ("", ".", "..") or "/" in top:
            continue
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
    marker.unlink()


def _vetted_members(archive: Path) -> tuple[list, list, int]:
    """Read the whole member list (this also detects truncation) and check every member;
    returns the members, the top-level names and the bytes extraction would write."""
    members, total = [], 0
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:   # headers one by one: a bomb is refused at its first header
                members.append(m)
                total += m.size if m.isreg() else 0
                _check_size(archive, total)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise CheckpointError(f"{archive}: cannot read the tar archive (truncated or corrupt?): {e}") from e
    seen: dict[str, bool] = {}
    for m in members:
        rel = _safe_name(archive, m)
        if rel in seen:
            raise CheckpointError(f"{archive}: member {m.name!r} occurs twice; refusing to extract")
        seen[rel] = m.isdir()
    for rel in seen:  # a file may not also be used as a folder (a/b next to file a)
        for parent in PurePosixPath(rel).parents:
            if str(parent) != "." and seen.get(str(parent)) is False:
                raise CheckpointError(f"{archive}: member {rel!r} lies under the file {str(parent)!r}")
    if not any(r.endswith(".index") for r in seen):
        raise CheckpointError(f"{archive}: contains no TF checkpoint (no '*.index' member)")
    tops = sorted({PurePosixPath(r).parts[0] for r in seen})
    return members, tops, total


def _check_size(archive: Path, total: int) -> None:
    """Refuse an archive whose members so far add up past the size or ratio limits."""
    cap, ratio = limit("archive_bytes"), limit("archive_ratio")
    if total > cap:
        raise CheckpointError(f"{archive}: unpacks to more than {human_bytes(cap)} "
                              f"({override_hint('archive_bytes')})")
    packed = max(archive.stat().st_size, 1)
    if total > _RATIO_FROM and total > ratio * packed:
        raise CheckpointError(f"{archive}: unpacks to over {total / packed:.0f}x its "
                              f"{human_bytes(packed)} (a checkpoint compresses about 1.1x; "
                              f"{override_hint('archive_ratio')})")


def _safe_name(archive: Path, m: tarfile.TarInfo) -> str:
    """The member's normalised relative name, or CheckpointError if it is not safe to write."""
    name = m.name
    kind = ("symlink" if m.issym() else "hardlink" if m.islnk() else
            "device" if (m.ischr() or m.isblk()) else "fifo" if m.isfifo() else None)
    if kind or not (m.isreg() or m.isdir()):
        what = f"a {kind} to {m.linkname!r}" if kind in ("symlink", "hardlink") else f"a {kind or 'special file'}"
        raise CheckpointError(f"{archive}: member {name!r} is {what}; only regular files and folders are accepted")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise CheckpointError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if "\\" in name or "\x00" in name:
        raise CheckpointError(f"{archive}: member {name!r} has a backslash or NUL in its name; refusing to extract")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise CheckpointError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    if not parts:
        raise CheckpointError(f"{archive}: member {name!r} has an empty name")
    return "/".join(parts)


def _write_members(archive: Path, members: list, staging: Path) -> None:
    """Write vetted members under the fresh, empty `staging` folder (nothing else is touched)."""
    root = os.path.realpath(staging)
    with tarfile.open(archive, "r:*") as tf:
        for m in members:
            dest = staging / _safe_name(archive, m)
            if m.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Defence in depth: staging holds no links, but never write through one anyway.
            if os.path.commonpath([root, os.path.realpath(dest.parent)]) != root:
                raise CheckpointError(f"{archive}: member {m.name!r} would be written outside {staging}")
            src = tf.extractfile(m)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
            if (out_size := dest.stat().st_size) != m.size:
                raise CheckpointError(f"{archive}: member {m.name!r} is truncated ({out_size} of {m.size} bytes)")
