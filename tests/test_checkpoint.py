"""Checkpoints in the released EfficientDet layout: writing, loading (EMA, modes), edetgraph's
own format, and safe handling of archives. Variable lists come from the shipped TSVs."""
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from edetgraph.checkpoints.checkpoint import (
    EMA_SUFFIX,
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    write_released,
)
from edetgraph.resources import path as resource

CLASS_PREDICT = ("class_net/class-predict/pointwise_kernel", "class_net/class-predict/bias")


def _rows(model: str) -> list:
    """(name, shape, dtype) of every entry of the released checkpoint of `model`."""
    lines = resource(f"efficientdet-{model}_ckpt_variables.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["name", "shape", "dtype"]
    out = []
    for line in lines[1:]:
        name, shape, dtype = line.split("\t")
        out.append((name, () if shape == "scalar" else tuple(int(s) for s in shape.split("x")), dtype))
    return out


def _model_rows(model: str) -> list:
    return [r for r in _rows(model) if not r[0].endswith(EMA_SUFFIX) and r[0] != "global_step"]


def _values(rows, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(d) for n, s, d in rows}


def _variables(rows, seed: int = 99) -> dict:
    """What model.variables_by_name() will return: one tf.Variable per name, random init."""
    return {n: tf.Variable(v, name=n.replace("/", "_"), trainable=False) for n, v in _values(rows, seed).items()}


def _assert_values(variables: dict, expected: dict, names=None):
    for n in names if names is not None else variables:
        np.testing.assert_array_equal(variables[n].numpy(), expected[n], err_msg=n)


def _tree(root: Path) -> dict:
    """Every path under root (links not followed) with its size, for before/after comparisons."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = p.lstat().st_size if p.is_file() else "dir"
    return out


@pytest.fixture(scope="module")
def d0(tmp_path_factory):
    """Released-layout D0 checkpoint (folder + tar.gz) with EMA shadows differing from raw."""
    root = tmp_path_factory.mktemp("d0")
    rows = _model_rows("d0")
    raw = _values(rows, seed=0)
    ema = {n: v + np.float32(0.5) + np.abs(v) for n, v in raw.items()}  # differs everywhere
    prefix = write_released(raw, root / "efficientdet-d0", ema=ema, global_step=123,
                            tar_gz=str(root / "efficientdet-d0.tar.gz"))
    return dict(root=root, rows=rows, raw=raw, ema=ema, prefix=prefix, tar=root / "efficientdet-d0.tar.gz")


@pytest.fixture(scope="module")
def d1(tmp_path_factory):
    """Released-layout D1 checkpoint without EMA shadows."""
    root = tmp_path_factory.mktemp("d1")
    rows = _model_rows("d1")
    raw = _values(rows, seed=1)
    prefix = write_released(raw, root / "efficientdet-d1", global_step=7, tar_gz=str(root / "efficientdet-d1.tar.gz"))
    return dict(root=root, rows=rows, raw=raw, prefix=prefix, tar=root / "efficientdet-d1.tar.gz")


# --- released layout -------------------------------------------------------------------------

def test_written_d0_matches_released_variable_list(d0):
    folder = d0["root"] / "efficientdet-d0"
    assert sorted(os.listdir(folder)) == ["checkpoint", "model.data-00000-of-00001", "model.index"]
    reader = tf.train.load_checkpoint(d0["prefix"])
    got = {n: (tuple(s), reader.get_variable_to_dtype_map()[n].name)
           for n, s in reader.get_variable_to_shape_map().items()}
    assert got == {n: (s, d) for n, s, d in _rows("d0")}
    assert reader.get_tensor("global_step") == 123
    assert ema_differs(d0)
    with tarfile.open(d0["tar"]) as tar:
        assert sorted(tar.getnames()) == ["efficientdet-d0"] + [f"efficientdet-d0/{f}" for f in sorted(os.listdir(folder))]


def ema_differs(d0) -> bool:
    return all(np.all(d0["ema"][n] != d0["raw"][n]) for n in d0["raw"])


def test_d0_loads_ema_shadows(d0):
    variables = _variables(d0["rows"])
    report = load_checkpoint(d0["prefix"], variables)
    assert report.used_ema and report.format == "name"
    assert sorted(report.loaded) == sorted(variables) and len(report.loaded) == 709
    assert not (report.missing or report.mismatched or report.unexpected or report.skipped or report.ema_fallback)
    assert report.ignored == ["global_step"]
    _assert_values(variables, d0["ema"])
    assert "EMA" in report.summary() and "loaded 709/709" in report.summary()


def test_d0_loads_raw_values_without_ema(d0):
    variables = _variables(d0["rows"])
    report = load_checkpoint(d0["prefix"], variables, use_ema=False)
    assert not report.used_ema and not report.unexpected
    _assert_values(variables, d0["raw"])


def test_d1_without_shadows_loads_raw(d1):
    variables = _variables(d1["rows"])
    report = load_checkpoint(d1["prefix"], variables)
    assert report.used_ema is False and len(report.loaded) == len(d1["rows"]) and not report.missing
    _assert_values(variables, d1["raw"])
    with pytest.raises(CheckpointError, match="box_net/box-0-bn-3/beta/ExponentialMovingAverage") as err:
        load_checkpoint(d1["prefix"], _variables(d1["rows"]), use_ema=True)
    assert "the file has no ExponentialMovingAverage shadows" in str(err.value)


@pytest.mark.parametrize("form", ["tar", "folder", "parent_folder", "prefix", "index_file"])
def test_every_path_form_loads_the_same(d0, tmp_path, form):
    paths = {"tar": d0["tar"], "folder": d0["root"] / "efficientdet-d0", "parent_folder": d0["root"],
             "prefix": d0["prefix"], "index_file": d0["prefix"] + ".index"}
    if form == "parent_folder":  # holds the folder and the archive, nothing extracted yet
        shutil.copytree(d0["root"] / "efficientdet-d0", tmp_path / "efficientdet-d0")
        paths[form] = tmp_path
    variables = _variables(d0["rows"])
    report = load_checkpoint(paths[form], variables, extract_dir=tmp_path / "x")
    assert report.used_ema and not report.missing
    _assert_values(variables, d0["ema"])
    if form == "tar":
        assert report.prefix == str(tmp_path / "x" / "efficientdet-d0" / "model")


def test_d1_tar_gz_loads_raw_next_to_another_archive(d0, d1, tmp_path):
    variables = _variables(d1["rows"])
    report = load_checkpoint(d1["tar"], variables, extract_dir=tmp_path)
    assert not report.used_ema
    _assert_values(variables, d1["raw"])
    # A second archive unpacked into the same folder leaves each checkpoint unambiguous.
    assert resolve_checkpoint(d0["tar"], tmp_path) == str(tmp_path / "efficientdet-d0" / "model")
    assert resolve_checkpoint(d1["tar"], tmp_path) == report.prefix
    assert resolve_checkpoint(Path(report.prefix).parent / "checkpoint") == report.prefix


def test_archive_extracted_into_the_cache_once_and_refreshed_when_replaced(d1, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("EDETGRAPH_CACHE", str(tmp_path / "cache"))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    archive = downloads / "efficientdet-d1.tar.gz"
    shutil.copy(d1["tar"], archive)
    prefix = resolve_checkpoint(archive)
    (extracted,) = (tmp_path / "cache" / "checkpoints").iterdir()
    assert extracted.name.startswith("efficientdet-d1-")
    assert prefix == str(extracted / "efficientdet-d1" / "model")
    assert os.listdir(downloads) == ["efficientdet-d1.tar.gz"]     # nothing beside it
    index = Path(prefix + ".index")
    first = index.stat().st_mtime_ns
    os.utime(index, ns=(first - 10**9, first - 10**9))  # a re-extraction would renew this
    assert resolve_checkpoint(archive) == prefix and index.stat().st_mtime_ns == first - 10**9
    archive.touch()  # a new download: the old extraction is replaced, not reused
    assert resolve_checkpoint(archive) == prefix and index.stat().st_mtime_ns != first - 10**9
    assert sorted(os.listdir(extracted)) == [
        ".edetgraph-extracted-efficientdet-d1.tar.gz.json", "efficientdet-d1"]


# --- modes -----------------------------------------------------------------------------------

def _without(values: dict, name: str) -> dict:
    return {k: v for k, v in values.items() if k != name}


def test_strict_names_missing_variable_and_assigns_nothing(d1, tmp_path):
    gone = "efficientnet-b1/blocks_3/conv2d/kernel"
    prefix = write_released(_without(d1["raw"], gone), tmp_path / "ck")
    variables = _variables(d1["rows"], seed=5)
    before = {n: v.numpy() for n, v in variables.items()}
    with pytest.raises(CheckpointError, match="missing 1") as err:
        load_checkpoint(prefix, variables)
    assert gone in str(err.value) and prefix in str(err.value)
    _assert_values(variables, before)
    with pytest.raises(CheckpointError, match=gone):
        load_checkpoint(prefix, _variables(d1["rows"]), mode="finetune")  # backbone: fatal there too


def test_strict_names_shape_mismatch(d1):
    name = "resample_p6/conv2d/kernel"
    rows = [(n, (1, 1, 320, 64) if n == name else s, d) for n, s, d in d1["rows"]]
    with pytest.raises(CheckpointError, match="mismatched 1") as err:
        load_checkpoint(d1["prefix"], _variables(rows))
    assert f"{name}: checkpoint [1, 1, 320, 88] float32" in str(err.value)
    assert "vs variable [1, 1, 320, 64]" in str(err.value)
    with pytest.raises(CheckpointError, match=name):  # a backbone/fpn mismatch is fatal in finetune
        load_checkpoint(d1["prefix"], _variables(rows), mode="finetune")


def test_finetune_with_20_classes_skips_class_predict(d0):
    head = {CLASS_PREDICT[0]: (1, 1, 64, 9 * 20), CLASS_PREDICT[1]: (9 * 20,)}
    rows = [(n, head.get(n, s), d) for n, s, d in d0["rows"]]
    with pytest.raises(CheckpointError, match="class-predict/bias"):
        load_checkpoint(d0["prefix"], _variables(rows))
    variables = _variables(rows)
    init = {n: variables[n].numpy() for n in CLASS_PREDICT}
    report = load_checkpoint(d0["prefix"], variables, mode="finetune")
    assert sorted(report.skipped) == sorted(CLASS_PREDICT) and not report.missing
    assert sorted(m.name for m in report.mismatched) == sorted(CLASS_PREDICT)
    assert len(report.loaded) == 709 - 2 and report.used_ema
    _assert_values(variables, d0["ema"], [n for n in variables if n not in CLASS_PREDICT])
    _assert_values(variables, init, CLASS_PREDICT)


def test_finetune_tolerates_missing_head_variable_only(d0):
    rows = d0["rows"] + [("class_net/class-3/bias", (64,), "float32")]
    report = load_checkpoint(d0["prefix"], _variables(rows), mode="finetune")
    assert report.missing == ["class_net/class-3/bias" + EMA_SUFFIX]
    assert report.skipped == ["class_net/class-3/bias"] and len(report.loaded) == 709
    rows = d0["rows"] + [("fpn_cells/cell_3/fnode0/WSM", (), "float32")]
    with pytest.raises(CheckpointError, match="fpn_cells/cell_3/fnode0/WSM"):
        load_checkpoint(d0["prefix"], _variables(rows), mode="finetune")


def test_lenient_reports_and_loads_the_rest(d0):
    gone, odd = "box_net/box-predict/bias", "efficientnet-b0/stem/conv2d/kernel"
    rows = [(n, (3, 3, 3, 16) if n == odd else s, d) for n, s, d in d0["rows"] if n != gone]
    rows.append(("efficientnet-b0/blocks_99/conv2d/kernel", (1, 1, 8, 8), "float32"))
    variables = _variables(rows)
    report = load_checkpoint(d0["prefix"], variables, mode="lenient")
    assert report.missing == ["efficientnet-b0/blocks_99/conv2d/kernel" + EMA_SUFFIX]
    assert [m.name for m in report.mismatched] == [odd]
    assert report.unexpected == [gone, gone + EMA_SUFFIX]
    assert len(report.loaded) == 709 - 2
    _assert_values(variables, d0["ema"], report.loaded)
    assert "unexpected 2" in report.summary()


def test_auto_ema_falls_back_to_raw_for_a_variable_without_shadow(d0, tmp_path):
    lone = "fpn_cells/cell_1/fnode2/WSM_1"
    prefix = write_released(d0["raw"], tmp_path / "ck", ema=_without(d0["ema"], lone))
    variables = _variables(d0["rows"])
    report = load_checkpoint(prefix, variables)
    assert report.used_ema and report.ema_fallback == [lone]
    _assert_values(variables, {**d0["ema"], lone: d0["raw"][lone]})
    with pytest.raises(CheckpointError, match=lone + EMA_SUFFIX):
        load_checkpoint(prefix, _variables(d0["rows"]), use_ema=True)


def test_bad_arguments_are_rejected(d0):
    with pytest.raises(ValueError, match="mode"):
        load_checkpoint(d0["prefix"], {}, mode="loose")
    with pytest.raises(ValueError, match="use_ema"):
        load_checkpoint(d0["prefix"], {}, use_ema="yes")
    with pytest.raises(ValueError, match="ema entry"):
        write_released({"a": np.zeros(2, np.float32)}, "unused", ema={"b": np.zeros(2, np.float32)})


# --- edetgraph's own format ------------------------------------------------------------------

def test_own_checkpoint_round_trips_exactly(d0, tmp_path):
    variables = _variables(d0["rows"], seed=11)
    ema = _variables(d0["rows"], seed=12)
    prefix = save_checkpoint(variables, tmp_path / "own" / "ckpt", step=42, ema=ema)
    assert prefix == str(tmp_path / "own" / "ckpt")
    fresh = _variables(d0["rows"], seed=13)
    report = load_checkpoint(tmp_path / "own", fresh)
    assert report.format == "object" and report.used_ema and report.ignored == ["global_step"]
    assert len(report.loaded) == 709 and not (report.missing or report.unexpected or report.mismatched)
    _assert_values(fresh, {n: v.numpy() for n, v in ema.items()})
    report = load_checkpoint(prefix, fresh, use_ema=False)
    _assert_values(fresh, {n: v.numpy() for n, v in variables.items()})
    # Plain TF can read it too, by the same structure.
    other = _variables(d0["rows"], seed=14)
    tf.train.Checkpoint(variables=other).read(prefix).expect_partial().assert_existing_objects_matched()
    _assert_values(other, {n: v.numpy() for n, v in variables.items()})


def test_own_checkpoint_reports_mismatch_by_name(d1, tmp_path):
    prefix = save_checkpoint(_variables(d1["rows"]), tmp_path / "ckpt")
    rows = [(n, (9,) if n == CLASS_PREDICT[1] else s, d) for n, s, d in d1["rows"]]
    report = load_checkpoint(prefix, _variables(rows), mode="finetune")
    assert report.format == "object" and not report.used_ema and report.skipped == [CLASS_PREDICT[1]]
    assert report.ignored == []


# --- hostile and broken archives -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small valid released-layout folder: archive tests need no big tensors."""
    return Path(write_released({"a": np.arange(3, dtype=np.float32)},
                               tmp_path_factory.mktemp("tiny") / "efficientdet-d1")).parent


def _tar_with(archive: Path, folder: Path, evil) -> None:
    """A tar.gz holding a valid checkpoint folder followed (last!) by the members `evil` adds."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="efficientdet-d1")
        evil(tar)


def _member(tar, name, kind=tarfile.REGTYPE, linkname="", data=b"evil"):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


# kind -> (members added after a valid checkpoint, fragment the refusal must contain)
HOSTILE = {
    "dotdot": (lambda out: lambda t: _member(t, "../evil.txt"), "contains '..'"),
    "nested_dotdot": (lambda out: lambda t: _member(t, "efficientdet-d1/../../outside/evil.txt"), "contains '..'"),
    "absolute": (lambda out: lambda t: _member(t, str(out / "abs_evil.txt")), "absolute path"),
    "symlink_outside": (lambda out: lambda t: _member(t, "efficientdet-d1/link", tarfile.SYMTYPE, str(out)),
                        "is a symlink"),
    "write_through_symlink": (lambda out: lambda t: (
        _member(t, "efficientdet-d1/link", tarfile.SYMTYPE, "../../outside"),
        _member(t, "efficientdet-d1/link/evil.txt")), "is a symlink"),
    "hardlink_outside": (lambda out: lambda t: _member(t, "efficientdet-d1/hl", tarfile.LNKTYPE,
                                                       str(out / "secret.txt")), "is a hardlink"),
    "hardlink_inside": (lambda out: lambda t: _member(t, "efficientdet-d1/hl", tarfile.LNKTYPE,
                                                      "efficientdet-d1/checkpoint"), "is a hardlink"),
    "device": (lambda out: lambda t: _member(t, "efficientdet-d1/dev", tarfile.CHRTYPE), "is a device"),
    "fifo": (lambda out: lambda t: _member(t, "efficientdet-d1/pipe", tarfile.FIFOTYPE), "is a fifo"),
    "duplicate": (lambda out: lambda t: _member(t, "efficientdet-d1/checkpoint"), "occurs twice"),
}


@pytest.mark.parametrize("default_target", [False, True], ids=["extract_dir", "cache"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_nothing_is_written(tiny, tmp_path, kind, default_target,
                                                           monkeypatch):
    monkeypatch.setenv("EDETGRAPH_CACHE", str(tmp_path / "cache"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("keep")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    archive = downloads / "efficientdet-d1.tar.gz"
    members, refusal = HOSTILE[kind]
    _tar_with(archive, tiny, members(outside))
    with tarfile.open(archive) as tar:  # the hostile member really is in the archive
        last = tar.getmembers()[-1]
        assert kind != "absolute" or last.name.startswith("/")
        assert kind not in ("dotdot", "nested_dotdot") or ".." in last.name
    before = _tree(tmp_path)
    with pytest.raises(CheckpointError, match=refusal) as err:
        resolve_checkpoint(archive, None if default_target else downloads / "target")
    assert str(archive) in str(err.value)
    assert _tree(tmp_path) == before
    assert (outside / "secret.txt").read_text() == "keep"
    with pytest.raises(CheckpointError):
        load_checkpoint(archive, {"a": tf.Variable(np.zeros(3, np.float32))})
    assert _tree(tmp_path) == before


def test_tiny_archive_without_hostile_members_extracts(tiny, tmp_path):
    """Control for the hostile cases: the same archive minus the bad member is accepted."""
    archive = tmp_path / "efficientdet-d1.tar.gz"
    _tar_with(archive, tiny, lambda tar: _member(tar, "efficientdet-d1/README"))
    a = tf.Variable(np.zeros(3, np.float32))
    report = load_checkpoint(archive, {"a": a}, extract_dir=tmp_path / "target")
    np.testing.assert_array_equal(a.numpy(), [0, 1, 2])
    assert (tmp_path / "target" / "efficientdet-d1" / "README").read_bytes() == b"evil"
    assert report.prefix == str(tmp_path / "target" / "efficientdet-d1" / "model")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.01])
def test_truncated_archive_gives_clear_error(d1, tmp_path, keep):
    data = d1["tar"].read_bytes()
    archive = tmp_path / "efficientdet-d1.tar.gz"
    archive.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(archive, _variables(d1["rows"]))
    assert str(archive) in str(err.value)
    assert os.listdir(tmp_path) == ["efficientdet-d1.tar.gz"]


def test_archive_of_random_files_gives_clear_error(tmp_path):
    src = tmp_path / "stuff"
    src.mkdir()
    for i in range(3):
        (src / f"file{i}.bin").write_bytes(os.urandom(1000))
    archive = tmp_path / "efficientdet-d0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="efficientdet-d0")
    with pytest.raises(CheckpointError, match="contains no TF checkpoint") as err:
        resolve_checkpoint(archive)
    assert str(archive) in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["efficientdet-d0.tar.gz", "stuff"]
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(os.urandom(5000))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        resolve_checkpoint(junk)


# --- resolving folders and prefixes ----------------------------------------------------------

def test_checkpoint_file_with_foreign_absolute_path_resolves_beside_it(d1, tmp_path):
    folder = tmp_path / "trained"
    shutil.copytree(Path(d1["prefix"]).parent, folder)
    for f in folder.glob("model.*"):
        f.rename(folder / f.name.replace("model", "model.ckpt-100"))
    (folder / "checkpoint").write_text('model_checkpoint_path: "/home/tpu/run7/model.ckpt-100"\n')
    assert resolve_checkpoint(folder) == str(folder / "model.ckpt-100")


def test_ambiguous_or_empty_folders_are_errors(d1, tmp_path):
    for name in ("a", "b"):
        write_released({"x": np.zeros(2, np.float32)}, tmp_path / name)
        shutil.copy(tmp_path / name / "model.index", tmp_path / f"{name}.index")
    os.remove(tmp_path / "a" / "checkpoint")
    with pytest.raises(CheckpointError, match=r"several checkpoints \(a.index, b.index\)"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="contains no TF checkpoint"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_checkpoint(tmp_path / "nope" / "model")


def test_corrupt_data_file_is_a_checkpoint_error(d1, tmp_path):
    folder = tmp_path / "efficientdet-d1"
    shutil.copytree(Path(d1["prefix"]).parent, folder)
    data = folder / "model.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=str(folder / "model")):
        load_checkpoint(folder, _variables(d1["rows"]))
