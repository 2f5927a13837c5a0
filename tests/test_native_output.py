"""The one capture of a file descriptor (edetgraph.cli.captured_fd): the ncnn and MNN runners'
and quiet_native's."""
import os

import pytest

from edetgraph.verify.mnn_runner import quiet_stdout
from edetgraph.cli import captured_fd


@pytest.mark.parametrize("fd", [1, 2])
def test_captured_fd_takes_what_is_written_below_python(fd, capfd):
    lines = []
    with captured_fd(fd, lines):
        os.write(fd, b"  parse magic failed  \n\nsecond\n")   # as native code writes
    os.write(fd, b"after\n")
    assert lines == ["parse magic failed", "second"]
    assert "magic" not in capfd.readouterr()[fd - 1]


def test_captured_fd_restores_the_descriptor_after_an_error(capfd):
    lines = []
    with pytest.raises(ValueError), captured_fd(2, lines):
        os.write(2, b"said before failing\n")
        raise ValueError
    os.write(2, b"shown\n")
    assert lines == ["said before failing"] and "shown" in capfd.readouterr().err


def test_mnn_notices_are_dropped_other_lines_go_to_stderr(capfd):
    with quiet_stdout():
        os.write(1, b"The device supports: i8sdot:0\nMNN use high precision\nreal news\n")
    out, err = capfd.readouterr()
    assert "device supports" not in out + err and "real news" in err


def test_quiet_native_drops_only_the_known_notices(capfd, monkeypatch):
    from edetgraph.cli import quiet_native
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet_native():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 a real error from C++\n")
    err = capfd.readouterr().err
    assert "XNNPACK" not in err and "E0000 a real error from C++" in err
