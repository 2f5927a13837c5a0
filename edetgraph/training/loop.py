"""The host loop of training: one call of the compiled train step after another, then what
follows a call (NaN/Inf policy, precise BN at the end, checkpoints, evaluations, SIGTERM).

Everything the loop touches travels in one :class:`Loop` record, so each part of it stays
a small function; ``edetgraph.training.trainer`` builds the record and runs it.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time

import tensorflow as tf

from edetgraph.files import disk_full_message, is_disk_full, json_text, write_text
from edetgraph.task.coco import EvalError
from edetgraph.training.checkpointing import Checkpointer
from edetgraph.training.precise_bn import assign, recalibrate
from edetgraph.training.progress import Progress


class TrainError(RuntimeError):
    """Training stopped or could not start; `code` is the exit status the CLI returns."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def write_file(path: str, text: str) -> None:
    """Write a small file locally (atomically) or on gs:// (model dirs may live in a bucket,
    where an object appears whole anyway)."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    if "://" not in path:
        write_text(path, text)
        return
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


class _Preempted(Exception):
    pass


def _save(checkpointer: Checkpointer, step: int, log):
    """Save; an input iterator that cannot be checkpointed is dropped from then on."""
    try:
        return checkpointer, checkpointer.save(step)
    except (tf.errors.OpError, ValueError, TypeError, NotImplementedError, OSError) as e:
        if is_disk_full(e):   # not the iterator's fault: say what is wrong, leave no ckpt-N_temp
            checkpointer.remove_temporaries()
            raise TrainError(f"saving the checkpoint of step {step}: "
                             f"{disk_full_message(checkpointer.model_dir)}") from None
        if "iterator" not in checkpointer.objects:
            raise
        log(f"cannot save the input iterator ({type(e).__name__}); checkpoints leave it out, "
            "a resumed run restarts the data stream")
        reduced = checkpointer.without("iterator")
        return reduced, reduced.save(step)


def _evaluate(evaluator, state, step: int, progress: Progress, model_dir: str,
              recalibrate=None) -> dict:
    """COCO metrics of the weights that get exported (EMA when kept). ``recalibrate(values)
    -> {name: statistic}``, when given, evaluates with precise-BN statistics of a copy of
    them (the training state is left as it is)."""
    values = state.ema.values() if state.ema is not None else state.variables
    if recalibrate is not None:
        values = {**values, **recalibrate(values)}
    try:
        metrics = evaluator(values,
                            detections_out=os.path.join(model_dir, "eval", "detections.json"))
    except EvalError as e:
        raise TrainError(f"evaluation at step {step} failed: {e}") from None
    progress.message(f"[eval] step {step}: AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  "
                     f"AP75 {metrics['AP75']:.4f}  AR100 {metrics['AR100']:.4f}  "
                     f"({metrics['images']} images, {metrics['seconds']:.0f} s)")
    progress.scalars(step, {k: v for k, v in metrics.items() if k.startswith(("AP", "AR"))},
                     prefix="eval/")
    write_file(os.path.join(model_dir, "eval", "metrics.json"),
           json_text({"step": step, **metrics}, indent=1))
    return metrics


def _host_metrics(out) -> tuple[dict, int, int]:
    metrics, done, skipped = out
    return {k: float(v.numpy()) for k, v in metrics.items()}, int(done), int(skipped)


class _SigtermFlag:
    """SIGTERM -> finish the current call, save, exit (single-host strategies)."""

    def __init__(self, enabled: bool = True):
        self.raised, self.previous, self.enabled = False, None, enabled

    def __enter__(self):
        if not self.enabled:
            return self
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:          # not the main thread: leave signals alone
            self.previous = None
        return self

    def _handle(self, *_):
        self.raised = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


@dataclasses.dataclass
class Loop:
    """Everything the host loop touches, so each part of it stays a small function."""
    strategy: object
    state: object
    config: object
    train_fn: object
    iterator: object
    checkpointer: Checkpointer
    progress: Progress
    total: int
    model_dir: str
    log: object
    train_data: str = ""
    evaluator: object = None
    preemption: object = None
    chief: bool = True
    skipped: int = 0
    metrics: dict | None = None
    data_files: list = dataclasses.field(default_factory=list)   # what --data matched


def _one_call(loop: Loop, step: int) -> int:
    """Run one host call; returns the new step. Raises TrainError on a NaN/Inf stop."""
    n = min(loop.config.steps_per_call, loop.total - step)
    start = time.perf_counter()
    metrics, done, skipped = _host_metrics(loop.train_fn(loop.iterator, tf.constant(n)))
    seconds = time.perf_counter() - start
    new_step = int(loop.state.step.numpy())
    loop.skipped += skipped
    if metrics["ok"] < 1.0 and loop.config.nan_policy == "stop":
        last = loop.checkpointer.latest
        raise TrainError(
            f"loss or gradients became NaN/Inf at step {new_step + 1} (loss {metrics['loss']}); "
            f"stopped without saving. Last good checkpoint: {last or 'none'}. Lower the "
            "learning rate, or set nan_policy: skip", code=3)
    if skipped:
        loop.progress.message(f"[train] skipped {skipped} step(s) with a NaN/Inf loss "
                              f"({loop.skipped} so far)")
    loop.progress.update(new_step, done, seconds, metrics)
    return new_step


def _after_call(loop: Loop, step: int, sigterm: _SigtermFlag) -> None:
    config = loop.config
    last = step >= loop.total
    if loop.preemption is not None:
        loop.preemption.save_checkpoint_if_preempted(checkpoint_number=step)
    if last and config.bn_recalibration_batches:
        _recalibrate_bn(loop)
    if sigterm.raised or last or loop.checkpointer.due(step):
        loop.checkpointer, path = _save(loop.checkpointer, step, loop.log)
        if path and not last:
            loop.progress.message(f"[train] saved {path}")
    if sigterm.raised:
        raise _Preempted()
    eval_due = config.eval_every_steps and step % config.eval_every_steps < config.steps_per_call
    if loop.evaluator is not None and (last or (eval_due and step > 0)):
        # The last step's statistics were recomputed in place above; earlier evaluations
        # recompute them on a copy, so the curve measures what the final model would be.
        recal = (_recalibrator(loop) if config.bn_recalibration_batches and not last else None)
        loop.metrics = _evaluate(loop.evaluator, loop.state, step, loop.progress, loop.model_dir,
                                 recal)


def _recalibrator(loop: Loop):
    c = loop.config
    return lambda values: recalibrate(loop.state.spec, values, loop.train_data,
                                      c.bn_recalibration_batches, c.eval_batch_size)


def _recalibrate_bn(loop: Loop) -> None:
    """Precise BN on the weights that get evaluated and exported (EMA when kept)."""
    start = time.perf_counter()
    targets = loop.state.ema.shadows if loop.state.ema is not None else loop.state.variables
    assign(targets, _recalibrator(loop)(targets))
    loop.progress.message(f"[train] recomputed BN statistics over "
                          f"{loop.config.bn_recalibration_batches} training batches "
                          f"({time.perf_counter() - start:.0f} s)")


def run_loop(loop: Loop) -> int:
    step = int(loop.state.step.numpy())
    loop.checkpointer.start(step)
    if step >= loop.total:
        loop.log(f"already trained to step {step} of {loop.total}")
        if loop.evaluator is not None:
            loop.metrics = _evaluate(loop.evaluator, loop.state, step, loop.progress,
                                     loop.model_dir)
        return step
    # Multi-worker runs leave SIGTERM to the preemption handler, which saves on all workers.
    with _SigtermFlag(enabled=loop.preemption is None) as sigterm:
        while step < loop.total:
            step = _one_call(loop, step)
            try:
                _after_call(loop, step, sigterm)
            except _Preempted:
                raise TrainError(f"SIGTERM: saved a checkpoint at step {step}; rerun the same "
                                 "command to resume", code=143) from None
    return step
