"""Atomic outputs: every writer puts its file in place only once it is whole, so a failure
(a full disk, an error, an interrupt) leaves the previous file or nothing, never a
truncated one; a full disk is one line naming the folder."""
import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edetgraph import files
from edetgraph.task.visualize import save_picture


def _listing(folder):
    return sorted(os.listdir(folder))


def test_atomic_path_renames_on_success_and_removes_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and _listing(tmp_path) == ["out.json"]
    files.write_text(target, "new")
    assert target.read_text() == "new" and _listing(tmp_path) == ["out.json"]
    with files.atomic_path(tmp_path / "folder") as tmp:   # a folder works the same way
        os.mkdir(tmp)
        (Path(tmp) / "inside").write_text("x")
    assert (tmp_path / "folder" / "inside").read_text() == "x"


def test_disk_full_is_recognised_and_named(tmp_path):
    assert files.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert files.is_disk_full(RuntimeError("/x/ckpt-1_temp/part; No space left on device"))
    assert not files.is_disk_full(OSError(errno.ENOENT, "No such file"))
    msg = files.disk_full_message(tmp_path)
    assert msg.startswith(f"{tmp_path}: no space left on the device (") and "free" in msg


def test_a_picture_is_saved_whole_or_not_at_all(tmp_path, monkeypatch):
    pic = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    save_picture(pic, tmp_path / "a.jpg")
    assert Image.open(tmp_path / "a.jpg").size == (8, 8)

    def full(self, fp, format=None, **params):
        with open(fp, "wb") as f:
            f.write(b"\xff\xd8 half a jpeg")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError):
        save_picture(pic, tmp_path / "b.png")
    assert _listing(tmp_path) == ["a.jpg"]


@pytest.mark.slow
def test_an_export_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from edetgraph.graph.spec import load_spec
    from exporters.onnx_format import OnnxFormat
    from exporters.options import ExportFailed, ExportOptions
    from exporters.pipeline import export
    spec = load_spec("d0", ["image_size=64", "backbone.depth=0.1", "backbone.width=0.25",
                            "fpn.channels=8", "fpn.repeats=1", "head.repeats=1",
                            "anchors.max_level=5", "num_classes=3"])
    fmt = OnnxFormat()

    def full(converted, path):
        with open(path, "wb") as f:
            f.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fmt, "write", full)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportFailed) as e:
        export(spec, str(out), fmt, ExportOptions(verbose=False))
    assert str(e.value).startswith(f"{tmp_path}: no space left on the device (")
    assert str(e.value).endswith(f"free some space or write elsewhere; {out} not written")
    assert _listing(tmp_path) == []
