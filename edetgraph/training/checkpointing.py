"""Step-level training checkpoints: model variables (by checkpoint name), EMA shadows,
momentum slots, the step, and the input iterator when it can be saved.

The layout is edetgraph's object-based one (``variables/<name>``, ``ema/<name>``,
``global_step``), so `edetgraph.checkpoints.checkpoint.load_checkpoint` reads a training directory
directly (eval, export, fine-tuning). tf.train.CheckpointManager writes each checkpoint
completely before it updates the ``checkpoint`` index file, so a run killed mid-save
resumes from the previous one.

Under multi-worker training every worker must take part in a save (reading a sync-on-read
variable is a collective); only the chief writes into the model directory, the others into
a scratch folder that is removed again.

On start the newest checkpoint is read whole before it is restored (TensorFlow checks each
tensor's length and checksum); a damaged one (a truncated data file, a missing shard) is
passed over for the newest intact one, and the log says so. ``ckpt-N_temp/`` folders, what
a save killed or stopped by a full disk leaves, are removed.
"""
from __future__ import annotations

import os
import time

import tensorflow as tf

from edetgraph.checkpoints.checkpoint import LABELS_KEY, CheckpointError, check_readable
from edetgraph.checkpoints.integrity import model_held
from edetgraph.cli import first_line


LOSS_SCALE_KEY = "loss_scale/scale/.ATTRIBUTES/VARIABLE_VALUE"


class CheckpointMismatch(RuntimeError):
    """The model directory holds checkpoints of another model or other settings, or none
    of its checkpoints can be read."""


def repair_state(model_dir: str) -> str | None:
    """Rewrite the model dir's ``checkpoint`` index file when it does not parse (a crash, a
    full disk or a hand edit): it only lists the ``ckpt-N`` prefixes, which are rebuilt
    from the ``ckpt-N.index`` files present, newest last (each is then checked as usual).
    Returns a line saying what was done, or None when the file was fine or absent."""
    state = os.path.join(model_dir, "checkpoint")
    if not tf.io.gfile.exists(state):
        return None
    try:
        tf.train.get_checkpoint_state(model_dir)
        return None
    except (ValueError, UnicodeDecodeError, tf.errors.OpError) as e:
        reason = first_line(e, 120)
    found = []
    for index in tf.io.gfile.glob(os.path.join(model_dir, "ckpt-*.index")):
        number = os.path.basename(index)[len("ckpt-"):-len(".index")]
        if number.isdigit():
            found.append((int(number), index[:-len(".index")]))
    prefixes = [p for _, p in sorted(found)]
    if prefixes:
        tf.compat.v1.train.update_checkpoint_state(model_dir, prefixes[-1], prefixes)
    else:
        tf.io.gfile.remove(state)
    return (f"{state}: damaged ({reason}); rebuilt from the checkpoints present "
            f"({', '.join(os.path.basename(p) for p in prefixes) or 'none'})")


class Checkpointer:
    """Saves every `every_steps` steps or `every_minutes` minutes (whichever comes first),
    keeping the newest `keep`; restores the newest on start."""

    def __init__(self, objects: dict, model_dir, keep: int, step_var, every_steps=None,
                 every_minutes=None, chief: bool = True, worker_index: int = 0):
        self.objects = dict(objects)
        self.keep, self.worker_index = keep, worker_index
        self.model_dir = os.fspath(model_dir)
        self.chief = chief
        self.directory = (self.model_dir if chief else
                          os.path.join(self.model_dir, f".worker-{worker_index}-tmp"))
        self.checkpoint = tf.train.Checkpoint(**self.objects)
        self.repaired = repair_state(self.model_dir) if chief else None
        self.input_changed = False   # set by the trainer: --data differs from the saved run
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory,
                                                  max_to_keep=keep if chief else 1,
                                                  step_counter=step_var)
        # Non-chief workers read what the chief wrote.
        self.read_manager = self.manager if chief else tf.train.CheckpointManager(
            self.checkpoint, self.model_dir, max_to_keep=keep)
        self.step_var = step_var
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.last_step, self.last_time = None, time.monotonic()
        if chief:
            self.remove_temporaries()

    def remove_temporaries(self) -> None:
        """Remove the ``ckpt-N_temp/`` folders an interrupted or failed save left."""
        for temp in tf.io.gfile.glob(os.path.join(self.model_dir, "ckpt-*_temp")):
            if tf.io.gfile.isdir(temp):
                tf.io.gfile.rmtree(temp)

    @property
    def latest(self) -> str | None:
        return self.read_manager.latest_checkpoint

    def restore(self, log=None) -> str | None:
        """Restore the newest intact checkpoint of the model dir; None when there is none.
        ``log`` hears of every damaged checkpoint passed over, and of an input position
        that no longer fits the data (another --data: its weights are resumed and the input
        starts over). Only a checkpoint whose files do not read back whole is called
        damaged: an intact one is never reported as one."""
        candidates = list(reversed(self.read_manager.checkpoints)) or (
            [self.latest] if self.latest else [])
        if not candidates:
            return None
        damaged, failed = [], []
        for path in candidates:
            try:
                check_readable(path)
            except (CheckpointError, tf.errors.OpError, IndexError) as e:
                damaged.append(path)
                if log:
                    log(f"{first_line(e, 300)}; passing over it")
                continue
            try:
                self._restore_resuming_input(path, log)
            except (tf.errors.OpError, IndexError) as e:
                failed.append(f"{os.path.basename(path)}: {first_line(e, 200)}")
                if log:
                    log(f"{path}: cannot be restored ({first_line(e, 300)}); passing over it")
                continue
            if damaged and log:
                log(f"resuming from {path}, the newest intact checkpoint (newer: "
                    f"{', '.join(os.path.basename(d) for d in damaged)}, damaged)")
            return path
        if failed:
            raise CheckpointMismatch(f"{self.model_dir}: its checkpoints read back whole but "
                                     f"cannot be restored into this run ({failed[0]}); they are "
                                     "intact: keep them, and train into a new --model-dir")
        raise CheckpointMismatch(f"{self.model_dir}: none of its checkpoints can be read "
                                 f"({', '.join(os.path.basename(d) for d in damaged)}); use a "
                                 "new --model-dir or repair them")

    def _restore_resuming_input(self, path: str, log) -> None:
        """Restore everything; when only the input iterator does not fit (its dataset is
        not the one saved: another --data, one more shard), restore the rest and let the
        input start over on the data given now."""
        if self.input_changed and "iterator" in self.objects:
            reason = "the training files are not those it read"
        else:
            try:
                self._restore(path)
                return
            except (tf.errors.OpError, IndexError) as e:
                if "iterator" not in self.objects:
                    raise
                reason = first_line(e, 200)
        self._restore(path, skip=("iterator",))   # raises when more than the input is wrong
        if log:
            log(f"resuming the weights of {os.path.basename(path)}; its input position does not"
                f" fit the data given now ({reason}), so the input starts over on that data")

    def _restore(self, path: str, skip=()) -> None:
        held = model_held(path)
        what = f"it holds {held}" if held else "another spec or num_classes?"
        skip = set(skip)
        # Left out when the file lacks them: the class names (checkpoints written before
        # they carried them), the loss scale (a float32 or bfloat16 run resumed in float16).
        reader = tf.train.load_checkpoint(path)
        skip |= {k for k, key in (("labels", LABELS_KEY), ("loss_scale", LOSS_SCALE_KEY))
                 if k in self.objects and not reader.has_tensor(key)}
        checkpoint = self.checkpoint if not skip else tf.train.Checkpoint(
            **{k: v for k, v in self.objects.items() if k not in skip})
        try:
            status = checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError) as e:   # ValueError: a variable of another shape
            raise CheckpointMismatch(
                f"{path}: this checkpoint does not match the model being trained ({what}); "
                f"use a new --model-dir. ({str(e).splitlines()[0][:200]})") from None
        status.expect_partial()
        self.last_step = int(self.step_var.numpy())

    def start(self, step: int) -> None:
        """Count the intervals from `step` (where this run starts)."""
        self.last_step, self.last_time = step, time.monotonic()

    def due(self, step: int) -> bool:
        if self.last_step is None:
            self.start(step)
        if self.every_steps and step - self.last_step >= self.every_steps:
            return True
        minutes = (time.monotonic() - self.last_time) / 60.0
        return bool(self.every_minutes) and minutes >= self.every_minutes and step > self.last_step

    def save(self, step: int) -> str | None:
        """Write a checkpoint for `step` (every worker must call this together)."""
        path = self.manager.save(checkpoint_number=step)
        self.last_step, self.last_time = step, time.monotonic()
        if not self.chief:
            if tf.io.gfile.exists(self.directory):
                tf.io.gfile.rmtree(self.directory)
            return None
        return path

    def without(self, name: str) -> "Checkpointer":
        """The same checkpointer without one object (e.g. an iterator that cannot be saved)."""
        objects = {k: v for k, v in self.objects.items() if k != name}
        out = Checkpointer(objects, self.model_dir, self.keep, self.step_var, self.every_steps,
                           self.every_minutes, self.chief, self.worker_index)
        out.last_step, out.last_time = self.last_step, self.last_time
        return out
