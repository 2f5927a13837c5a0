"""Hostile pictures and checkpoint archives: a picture declaring 20000 x 20000 pixels is
refused from its header before anything decodes it; an archive that would unpack past the
size, ratio or free-space limits is refused from its headers before anything is written,
and unpacks into the cache, never beside itself; a failed extraction leaves nothing."""
import errno
import io
import json
import os
import struct
import tarfile
import time
import zlib
from pathlib import Path

import pytest
from conftest import run_py

from edetgraph.checkpoints import archive as archive_mod
from edetgraph.checkpoints.archive import CheckpointError, resolve_checkpoint
from edetgraph.data.picture import PictureError, check_picture, picture_size

CLI = "import sys; from edetgraph.infer import main; sys.exit(main(sys.argv[1:]))"
# Runs infer in-process and reports the peak RSS of this process's own memory (VmHWM): not
# ru_maxrss, which on Linux keeps the high-water mark of the forked pytest process (GBs).
MEASURED = ("import sys\n"
            "from edetgraph.infer import main\n"
            "code = main(sys.argv[1:])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "print(int(hwm.split()[1]) // 1024)\n"
            "sys.exit(code)\n")


def png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A PNG declaring ``width x height``; ``rows`` of zero pixels really compressed in it
    (None: all of them, a real decompression bomb; 0: a header-only file)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    comp, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)
    idat = b"".join(comp.compress(row) for _ in range(height if rows is None else rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat + comp.flush()) + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- pictures

def test_picture_size_comes_from_the_header(tmp_path):
    bomb = png(tmp_path / "bomb.png", 20000, 20000, rows=0)
    assert bomb.stat().st_size < 200
    assert picture_size(bomb) == (20000, 20000)
    with pytest.raises(PictureError, match=r"bomb.png: 20000x20000 pixels \(400 MP\), more than "
                                           r"the 64 MP allowed \(set EDETGRAPH_MAX_IMAGE_PIXELS"):
        check_picture(bomb)
    with pytest.raises(PictureError, match="not a readable image"):
        picture_size(tmp_path.joinpath("junk.png").write_bytes(b"junk") and tmp_path / "junk.png")


def test_the_pixel_limit_is_right_both_ways(tmp_path, monkeypatch):
    small = png(tmp_path / "small.png", 40, 30)
    assert check_picture(small, max_pixels=1200) == (40, 30)       # exactly at the limit
    with pytest.raises(PictureError, match="40x30 pixels"):
        check_picture(small, max_pixels=1199)
    monkeypatch.setenv("EDETGRAPH_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(PictureError):
        check_picture(small)
    from edetgraph.task.preprocess import read_image   # TF: only for this part
    with pytest.raises(ValueError, match="more than the 0.001 MP allowed"):
        read_image(small)
    monkeypatch.setenv("EDETGRAPH_MAX_IMAGE_PIXELS", "1200")
    assert tuple(read_image(small).shape) == (30, 40, 3)


@pytest.mark.serial   # a wall-clock bound: runs alone (scripts/test)
def test_infer_refuses_a_real_png_bomb_at_once_in_little_memory(tmp_path):
    """1.1 MB of PNG that decodes to 1.2 GB (before the fix: 11.2 GB peak, 41 s, exit 0)."""
    bomb = png(tmp_path / "bomb.png", 20000, 20000)
    assert bomb.stat().st_size < 1.5e6
    start = time.perf_counter()
    r = run_py(MEASURED, "--spec", "demo", "--image", str(bomb), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and time.perf_counter() - start < 10
    assert r.stderr.strip().splitlines() == [
        f"error: {bomb}: 20000x20000 pixels (400 MP), more than the 64 MP allowed (set "
        "EDETGRAPH_MAX_IMAGE_PIXELS, or infer --max-pixels, to raise it)"]
    assert int(r.stdout) < 1024                 # MB of peak memory
    assert not (tmp_path / "out").exists()


def test_infer_out_must_be_a_folder_and_is_checked_before_the_model(tmp_path):
    pic = png(tmp_path / "p.png", 64, 64)
    (tmp_path / "afile").write_text("mine")
    r = run_py(CLI, "--spec", "demo", "--image", str(pic), "--out", str(tmp_path / "afile"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --out {tmp_path / 'afile'}: is a file, not a folder"
    assert (tmp_path / "afile").read_text() == "mine"


# ----------------------------------------------------------------------------- archives

def _checkpoint_folder(root: Path) -> Path:
    """A folder that looks like a released checkpoint to the archive code (no TF needed)."""
    d = root / "efficientdet-d0"
    d.mkdir(parents=True)
    (d / "checkpoint").write_text('model_checkpoint_path: "model"\n')
    (d / "model.index").write_bytes(os.urandom(2000))
    (d / "model.data-00000-of-00001").write_bytes(os.urandom(20000))
    return d


def _archive(path: Path, folder: Path, zeros: int = 0, declared: int = 0) -> Path:
    """A .tar.gz of ``folder``, plus ``zeros`` real bytes of zeros as one member, or a
    member header that declares ``declared`` bytes with no data after it."""
    raw = io.BytesIO()
    tar = tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT)
    tar.add(folder, arcname=folder.name)
    if zeros:
        info = tarfile.TarInfo(f"{folder.name}/zeros.bin")
        info.size = zeros
        tar.addfile(info, io.BytesIO(bytes(zeros)))
    if declared:   # a header alone (and no end of archive): a bomb's headers are all it takes
        info = tarfile.TarInfo(f"{folder.name}/huge.bin")
        info.size = declared
        data = raw.getvalue() + info.tobuf(format=tarfile.GNU_FORMAT)
    else:
        tar.close()
        data = raw.getvalue()
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    path.write_bytes(comp.compress(data) + comp.flush())
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDETGRAPH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_an_archive_unpacks_into_the_cache_not_beside_it(tmp_path, cache):
    downloads = tmp_path / "downloads"
    archive = _archive(tmp_path / "efficientdet-d0.tar.gz", _checkpoint_folder(tmp_path / "src"))
    downloads.mkdir()
    archive = archive.rename(downloads / archive.name)
    prefix = resolve_checkpoint(archive)
    assert prefix.startswith(str(cache / "checkpoints" / "efficientdet-d0-"))
    assert prefix.endswith("efficientdet-d0/model")
    assert os.listdir(downloads) == [archive.name]


@pytest.mark.parametrize("kind", ["declared_2GB", "zeros_100MB"])
@pytest.mark.serial   # a wall-clock bound: runs alone (scripts/test)
def test_an_archive_bomb_is_refused_before_anything_is_written(tmp_path, cache, kind):
    src = _checkpoint_folder(tmp_path / "src")
    archive = (_archive(tmp_path / "bomb.tar.gz", src, declared=2 << 30) if kind == "declared_2GB"
               else _archive(tmp_path / "bomb.tar.gz", src, zeros=100 << 20))
    assert archive.stat().st_size < 1 << 20
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"bomb.tar.gz: unpacks to over \d+x its .* "
                                              r"\(a checkpoint compresses about 1.1x; set "
                                              r"EDETGRAPH_MAX_ARCHIVE_RATIO"):
        resolve_checkpoint(archive)
    assert time.perf_counter() - start < 5
    assert not cache.exists()                        # nothing written, not even a folder


def test_the_archive_limits_are_right_both_ways(tmp_path, cache, monkeypatch):
    src = _checkpoint_folder(tmp_path / "src")
    archive = _archive(tmp_path / "ok.tar.gz", src, zeros=100 << 20)
    monkeypatch.setenv("EDETGRAPH_MAX_ARCHIVE_RATIO", "1e6")     # the ratio raised ...
    monkeypatch.setenv("EDETGRAPH_MAX_ARCHIVE_BYTES", str(50 << 20))
    with pytest.raises(CheckpointError, match=r"unpacks to more than 50.0 MB \(set "
                                              r"EDETGRAPH_MAX_ARCHIVE_BYTES"):
        resolve_checkpoint(archive)                   # ... the total still caps it
    assert not cache.exists()
    monkeypatch.setenv("EDETGRAPH_MAX_ARCHIVE_BYTES", str(200 << 20))
    prefix = Path(resolve_checkpoint(archive))
    assert (prefix.parent / "zeros.bin").stat().st_size == 100 << 20


def test_an_archive_the_disk_cannot_hold_is_refused(tmp_path, cache, monkeypatch):
    archive = _archive(tmp_path / "efficientdet-d0.tar.gz", _checkpoint_folder(tmp_path / "src"))
    monkeypatch.setattr(archive_mod, "free_bytes", lambda path: 10_000)
    with pytest.raises(CheckpointError, match=r"unpacks to 21.\d KB, but .* has only 9.8 KB free"):
        resolve_checkpoint(archive)
    assert not cache.exists()


def test_a_full_disk_during_extraction_leaves_nothing(tmp_path, cache, monkeypatch):
    archive = _archive(tmp_path / "efficientdet-d0.tar.gz", _checkpoint_folder(tmp_path / "src"))
    real = archive_mod._write_members

    def fill_up(archive_path, members, staging):
        real(archive_path, members, staging)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive_mod, "_write_members", fill_up)
    with pytest.raises(CheckpointError, match="extraction into .* failed: .*no space left on "
                                              "the device"):
        resolve_checkpoint(archive)
    assert not cache.exists()
    monkeypatch.setattr(archive_mod, "_write_members", real)
    assert Path(resolve_checkpoint(archive) + ".index").is_file()     # and then it works
    marker = next((cache / "checkpoints").iterdir()) / ".edetgraph-extracted-efficientdet-d0.tar.gz.json"
    assert json.loads(marker.read_text())["tops"] == ["efficientdet-d0"]


def test_infer_refuses_an_archive_bomb_before_tensorflow(tmp_path):
    src = _checkpoint_folder(tmp_path / "src")
    archive = _archive(tmp_path / "bomb.tar.gz", src, declared=2 << 30)
    pic = png(tmp_path / "p.png", 64, 64)
    cache = tmp_path / "cache"
    r = run_py(CLI, "--spec", "demo", "--ckpt", str(archive), "--image", str(pic),
               "--out", str(tmp_path / "out"), env={"EDETGRAPH_CACHE": str(cache)})
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "EDETGRAPH_MAX_ARCHIVE_RATIO" in r.stderr
    assert not cache.exists() and not (tmp_path / "out").exists()
