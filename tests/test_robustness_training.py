"""Model dirs and checkpoints at the door: training into a dir of another spec is one line
naming the model there (before any model is built); a truncated newest checkpoint is
passed over for the newest intact one, and the log says so; a missing data shard or a
truncated checkpoint is one line for infer and the exporters; a strict mismatch names the
model the checkpoint holds; a full disk while saving is one line naming the folder and
leaves no ckpt-N_temp; leftover ckpt-N_temp folders are removed."""
import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from test_train import tiny_config, tiny_spec

from edetgraph.checkpoints.archive import CheckpointError, resolve_checkpoint
from edetgraph.checkpoints.checkpoint import load_checkpoint
from edetgraph.graph.spec import load_spec
from edetgraph.nn.model import build_model
from edetgraph.training.checkpointing import Checkpointer
from edetgraph.training.loop import _save
from edetgraph.training.trainer import TrainError, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from edetgraph.data.synthetic import generate, write_tfrecords
    out = tmp_path_factory.mktemp("shapes")
    write_tfrecords(generate(out, 8, 64, seed=3, val_fraction=0.0, num_classes=3))
    return str(out / "tfrecord" / "train-*.tfrecord")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """A model dir with ckpt-1 and ckpt-2 of the tiny spec (and its spec.yaml)."""
    run = tmp_path_factory.mktemp("run")
    train(tiny_spec(), tiny_config(steps=2, checkpoint_every_steps=1), run, data=data,
          log=lambda m: None)
    assert sorted(p.name for p in run.glob("ckpt-*.index")) == ["ckpt-1.index", "ckpt-2.index"]
    return run


@pytest.fixture
def copy(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.slow   # the shared fixture trains the tiny model
def test_training_into_a_dir_of_another_spec_is_one_line_naming_it(copy, data):
    other = load_spec("d0", [*_tiny_overrides(), "num_classes=4"])
    with pytest.raises(TrainError) as e:
        train(other, tiny_config(steps=3), copy, data=data, log=lambda m: None)
    assert str(e.value) == (f"--model-dir {copy} holds checkpoints of efficientdet-d0 "
                            "(num_classes 3, 64x64), not of efficientdet-d0 (num_classes: 3 "
                            "there, 4 here); use a new --model-dir")
    assert sorted(p.name for p in copy.glob("ckpt-*.index")) == ["ckpt-1.index", "ckpt-2.index"]


@pytest.mark.slow   # the shared fixture trains the tiny model; a resume trains one step
def test_a_truncated_newest_checkpoint_is_passed_over_for_the_intact_one(copy, data):
    _truncate(copy / "ckpt-2.data-00000-of-00001")
    (copy / "ckpt-7_temp").mkdir()              # what a killed save leaves
    (copy / "ckpt-7_temp" / "part").write_bytes(b"half")
    lines = []
    result = train(tiny_spec(), tiny_config(steps=2, checkpoint_every_steps=1), copy, data=data,
                   log=lines.append)      # step 2 again, from ckpt-1: ckpt-2 is written anew
    assert result.step == 2
    assert any(ln.startswith(f"{copy / 'ckpt-2'}: cannot read checkpoint (truncated or corrupt?)")
               and ln.endswith("passing over it") for ln in lines), lines
    assert f"resuming from {copy / 'ckpt-1'}, the newest intact checkpoint (newer: ckpt-2, " \
           "damaged)" in lines
    assert f"resumed from {copy / 'ckpt-1'} at step 1" in lines
    assert not (copy / "ckpt-7_temp").exists()
    load_checkpoint(copy / "ckpt-2", build_model(tiny_spec()).variables_by_name())  # rewritten


@pytest.mark.slow   # the shared fixture trains the tiny model
def test_when_no_checkpoint_is_intact_training_refuses(copy, data):
    for name in ("ckpt-1", "ckpt-2"):
        _truncate(copy / f"{name}.data-00000-of-00001", 0.2)
    with pytest.raises(TrainError, match=r"none of its checkpoints can be read \(ckpt-2, ckpt-1\)"):
        train(tiny_spec(), tiny_config(steps=3), copy, data=data, log=lambda m: None)


@pytest.mark.slow   # the shared fixture trains the tiny model
def test_a_truncated_or_missing_checkpoint_is_one_line_for_a_loader(copy):
    variables = build_model(tiny_spec()).variables_by_name()
    _truncate(copy / "ckpt-2.data-00000-of-00001")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(copy, variables)
    assert str(e.value) == (f"{copy / 'ckpt-2'}: cannot read checkpoint (truncated or corrupt?): "
                            f"Read less bytes than requested; {copy / 'ckpt-1'} is there too "
                            "(pass it as the prefix)")
    (copy / "ckpt-2.data-00000-of-00001").unlink()
    with pytest.raises(CheckpointError) as e:   # pure Python: refused before TF in the CLIs
        resolve_checkpoint(copy)
    assert str(e.value) == (f"{copy / 'ckpt-2'}: its data file ckpt-2.data-00000-of-00001 is "
                            f"missing; {copy / 'ckpt-1'} is there (pass it as the prefix)")
    assert load_checkpoint(copy / "ckpt-1", variables).loaded


@pytest.mark.slow   # the shared fixture trains the tiny model
def test_a_strict_mismatch_names_the_model_the_checkpoint_holds(trained):
    other = build_model(load_spec("d0", [*_tiny_overrides(), "num_classes=4"]))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(trained, other.variables_by_name())
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"{trained / 'ckpt-2'}: refusing to load in strict mode: 2 "
                            "variable(s) missing or mismatched; it holds efficientdet-d0 "
                            "(num_classes 3, 64x64), says the spec.yaml beside it; first "
                            "class_net/class-predict/bias: checkpoint [27]")


def test_a_full_disk_while_saving_is_one_line_and_leaves_no_temp(tmp_path):
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = Checkpointer({"variables": {"w": tf.Variable(np.ones(3, np.float32))},
                         "global_step": step}, tmp_path, keep=2, step_var=step)
    ckpt.manager.save = _full_disk(tmp_path)
    with pytest.raises(TrainError) as e:
        _save(ckpt, 1, log=pytest.fail)       # not "cannot save the input iterator"
    assert str(e.value).startswith(f"saving the checkpoint of step 1: {tmp_path}: no space "
                                   "left on the device (")
    assert not list(tmp_path.glob("ckpt-*"))


def _full_disk(folder):
    def save(checkpoint_number=None):
        (folder / f"ckpt-{checkpoint_number}_temp").mkdir()
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{folder}/ckpt-{checkpoint_number}_temp/part-00000; No space left on "
                        f"device [errno {errno.ENOSPC}]")
    return save


def _tiny_overrides():
    from test_train import TINY
    return TINY


# Every file training leaves in a model dir, damaged in turn (garbage, or emptied): training
# resumes from the newest checkpoint that reads back whole and says so in one line, or
# refuses in one line; never a traceback, and an intact checkpoint is never called damaged.
# Each case damages its own copy of the one model dir the module trains (ckpt-1, ckpt-2).
DAMAGED = [("checkpoint", "garbage"), ("checkpoint", "empty"), ("spec.yaml", "garbage"),
           ("labels.json", "garbage"), ("train_config.yaml", "garbage"),
           ("data_files.json", "garbage"), ("ckpt-2.index", "garbage"),
           ("ckpt-2.data-00000-of-00001", "empty")]
# How far each case trains. What a damaged file does is decided while resuming, before the
# first step: the sidecars (spec.yaml, labels.json, train_config.yaml, data_files.json) are
# read, checked and rewritten, a damaged `checkpoint` index is rebuilt, a damaged ckpt-2 is
# passed over for ckpt-1. So most cases train to the step they resume at ("already trained to
# step N of N"): the resume and its one line are the whole claim, and no step is traced for
# nothing. One case goes on to a new checkpoint after the repair: the garbage `checkpoint`
# index trains step 3 and saves ckpt-3 into the rebuilt index (the emptied one is rebuilt
# the same way). A resumed step after a checkpoint passed over is
# test_a_truncated_newest_checkpoint_is_passed_over_for_the_intact_one.
STEPS = {("checkpoint", "garbage"): 3, ("checkpoint", "empty"): 2,
         ("ckpt-2.index", "garbage"): 1, ("ckpt-2.data-00000-of-00001", "empty"): 1}


@pytest.mark.slow   # a resume per damaged file
@pytest.mark.parametrize("name,how", DAMAGED, ids=[f"{n}-{h}" for n, h in DAMAGED])
def test_every_file_of_a_model_dir_damaged_in_turn_resumes_or_refuses_in_one_line(copy, data,
                                                                                 name, how):
    path = copy / name
    size = path.stat().st_size
    path.write_bytes(np.random.default_rng(5).bytes(max(16, size // 2)) if how == "garbage"
                     else b"")
    logs = []
    steps = STEPS.get((name, how), 2)
    result = train(tiny_spec(), tiny_config(steps=steps, checkpoint_every_steps=1), copy,
                   data=data, log=logs.append)
    said = "\n".join(logs)
    assert result.step == steps, said
    if name == "checkpoint":         # the index reads back, listing what is there
        assert "damaged" in said and "rebuilt from the checkpoints present (ckpt-1, ckpt-2)" \
            in said, said
        assert tf.train.latest_checkpoint(str(copy)) == str(copy / f"ckpt-{steps}"), said
    if name.startswith("ckpt-2"):     # passed over for ckpt-1, which is named intact
        assert "resuming from" in said and "ckpt-1, the newest intact" in said, said
        assert f"resumed from {copy / 'ckpt-1'} at step 1" in said, said
    else:                             # resumed from ckpt-2, no checkpoint passed over
        assert f"resumed from {copy / 'ckpt-2'} at step 2" in said, said
        assert "passing over" not in said, said
    if steps < 3:                     # nothing left to train after the resume
        assert f"already trained to step {steps} of {steps}" in said, said
    if name == "data_files.json":     # unknown files: the weights resume, the input restarts
        assert "input starts over" in said, said


@pytest.mark.slow   # trains the tiny model once more
def test_a_resume_with_one_more_shard_continues_from_the_newest_checkpoint(copy, data, tmp_path):
    """The saved input position belongs to the old file list: the weights resume, the input
    starts over on the new data with one line, and no checkpoint is called damaged. The glob
    (``train*``) also matches ``train.labels.json`` kept beside the records: training reads
    the records only. (Two claims, one resume: each trains a step past the checkpoint.)"""
    import glob
    folder = tmp_path / "data"
    shutil.copytree(Path(data).parent, folder)
    shard = sorted(glob.glob(str(folder / "train-*.tfrecord")))[0]
    shutil.copy(shard, folder / "train-more.tfrecord")            # one more file in the glob
    (folder / "train.labels.json").write_text('{"1": "a", "2": "b", "3": "c"}')
    logs = []
    result = train(tiny_spec(), tiny_config(steps=3, checkpoint_every_steps=1), copy,
                   data=str(folder / "train*"), log=logs.append)
    said = "\n".join(logs)
    assert result.step == 3, said
    assert f"resumed from {copy / 'ckpt-2'} at step 2" in said, said   # the newest checkpoint
    assert "input starts over" in said and "ckpt-2" in said, said
    assert "damaged" not in said and "repair" not in said, said
    assert not any("labels.json" in line and "corrupt" in line for line in logs), logs
    files = json.loads((copy / "data_files.json").read_text())
    assert "train.labels.json" not in json.dumps(files), files     # records only
    assert "train-more.tfrecord" in json.dumps(files), files


def test_a_remote_model_dir_that_cannot_be_reached_is_one_line(monkeypatch):
    def unreachable(path):
        raise tf.errors.FailedPreconditionError(None, None, "Could not resolve host\nmore")
    monkeypatch.setattr(tf.io.gfile, "exists", unreachable)
    with pytest.raises(TrainError, match=r"^--model-dir gs://b/run: cannot reach it \(Could "
                                         r"not resolve host\)$"):
        train(tiny_spec(), tiny_config(steps=1), "gs://b/run", data="x", log=lambda m: None)
