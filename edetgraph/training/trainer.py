"""Training an EfficientDet from a model spec and a training-settings file.

    from edetgraph.graph.spec import load_spec
    from edetgraph.training.config import load_train_config
    result = train(load_spec("demo"), load_train_config("demo"), "runs/demo")

Without ``data`` it trains on the built-in synthetic dataset (generated once into the cache).
The run resumes by itself from the newest checkpoint in ``model_dir``; checkpoints also
carry the EMA weights (what evaluation and export use). See `edetgraph.training` for the
pieces: settings, schedule, optimizer/EMA, strategies, input, checkpoints, progress.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import tensorflow as tf
import yaml

from edetgraph.checkpoints.checkpoint import CheckpointError, load_checkpoint
from edetgraph.task.coco import EvalError
from edetgraph.task.evaluation import Evaluator
from edetgraph.training import inputs as tdata
from edetgraph.training.checkpointing import Checkpointer, CheckpointMismatch
from edetgraph.training.distribute import (DistributeError, is_tpu, make_strategy,
                                            worker_info)
from edetgraph.training.precise_bn import assign, recalibrate
from edetgraph.training.progress import Progress
from edetgraph.training.step import build_state, make_train_function


class TrainError(RuntimeError):
    """Training stopped or could not start; `code` is the exit status the CLI returns."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class TrainResult:
    step: int                      # steps taken when the run ended
    total_steps: int
    checkpoint: str | None         # newest checkpoint (chief), None elsewhere
    metrics: dict | None           # last COCO evaluation, if any
    history: list                  # logged training metrics
    skipped_steps: int = 0
    seconds: float = 0.0


class _Preempted(Exception):
    pass


def _check_precision(precision: str) -> None:
    if precision != "float32":
        raise TrainError(f"--precision {precision}: not supported yet (the lowered model keeps "
                         "float32 variables and has no casting compute path); use float32")


def _write(path: str, text: str) -> None:
    """Write a small file locally or on gs:// (model dirs may live in a bucket)."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def _run_setup(config, model_dir: str, spec, chief: bool) -> None:
    if chief:
        _write(os.path.join(model_dir, "spec.yaml"), yaml.safe_dump(spec.to_dict(), sort_keys=False))
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "source"}
        _write(os.path.join(model_dir, "train_config.yaml"),
               yaml.safe_dump(settings, sort_keys=False))


def _initialise(ckpt_path, checkpointer: Checkpointer, state, log) -> None:
    """Resume from the model dir, else load --ckpt weights (finetune), then seed the EMA."""
    try:
        resumed = checkpointer.restore()
    except CheckpointMismatch as e:
        raise TrainError(str(e)) from None
    if resumed:
        log(f"resumed from {resumed} at step {int(state.step.numpy())}")
        return
    if ckpt_path:
        try:
            report = load_checkpoint(ckpt_path, state.variables, mode="finetune")
        except CheckpointError as e:
            raise TrainError(str(e).splitlines()[0]) from None
        log(report.summary(limit=5).replace("\n", "\n[train]   "))
    if state.ema is not None:
        state.ema.reset()


def _can_checkpoint(obj) -> bool:
    # Single-device iterators are trackable; distributed ones (multi-worker, TPU) are not.
    try:
        tf.train.Checkpoint(probe=obj)
    except ValueError:
        return False
    return True


def _save(checkpointer: Checkpointer, step: int, log):
    """Save; an input iterator that cannot be checkpointed is dropped from then on."""
    try:
        return checkpointer, checkpointer.save(step)
    except (tf.errors.OpError, ValueError, TypeError, NotImplementedError) as e:
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
    _write(os.path.join(model_dir, "eval", "metrics.json"),
           json.dumps({"step": step, **metrics}, indent=1))
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
class _Loop:
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


def _one_call(loop: _Loop, step: int) -> int:
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


def _after_call(loop: _Loop, step: int, sigterm: _SigtermFlag) -> None:
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


def _recalibrator(loop: _Loop):
    c = loop.config
    return lambda values: recalibrate(loop.state.spec, values, loop.train_data,
                                      c.bn_recalibration_batches, c.eval_batch_size)


def _recalibrate_bn(loop: _Loop) -> None:
    """Precise BN on the weights that get evaluated and exported (EMA when kept)."""
    start = time.perf_counter()
    targets = loop.state.ema.shadows if loop.state.ema is not None else loop.state.variables
    assign(targets, _recalibrator(loop)(targets))
    loop.progress.message(f"[train] recomputed BN statistics over "
                          f"{loop.config.bn_recalibration_batches} training batches "
                          f"({time.perf_counter() - start:.0f} s)")


def _run_loop(loop: _Loop) -> int:
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


def _make_loop(spec, config, model_dir, paths, strategy, ckpt, log, inject_nan_at) -> _Loop:
    worker, _ = worker_info(strategy)
    chief = worker == 0
    n_train = paths.num_train
    if config.needs_epoch_size() and n_train is None:
        n_train = tdata.count_records(paths.train, log)
    total, warmup = config.total_steps(n_train), config.warmup(n_train)
    seed = 0 if config.seed is None else config.seed
    with strategy.scope():
        state = build_state(spec, config, total, warmup, seed=seed)
    iterator = iter(tdata.distributed_input(strategy, paths.train, spec, config, config.seed))
    objects = {"variables": state.variables, "momentum": state.optimizer.slots,
               "global_step": state.step}
    if state.ema is not None:
        objects["ema"] = state.ema.shadows
    if config.checkpoint_input:
        if _can_checkpoint(iterator):
            objects["iterator"] = iterator
        else:
            log("this strategy's input iterator cannot be checkpointed; a resumed run "
                "restarts the data stream")
    checkpointer = Checkpointer(objects, model_dir, config.keep_checkpoints, state.step,
                                config.checkpoint_every_steps, config.checkpoint_every_minutes,
                                chief, worker)
    _initialise(ckpt, checkpointer, state, log)
    jit = is_tpu(strategy) if config.jit_compile is None else config.jit_compile
    train_fn = make_train_function(strategy, state, config, jit, inject_nan_at)
    progress = Progress(total, config.batch_size, config.log_every_steps,
                        os.path.join(model_dir, "train") if chief else None)
    return _Loop(strategy, state, config, train_fn, iterator, checkpointer, progress, total,
                 model_dir, log, train_data=paths.train, chief=chief)


def _attach_extras(loop: _Loop, spec, paths) -> None:
    """Evaluator (chief, when there is val data) and the multi-worker preemption handler."""
    if loop.chief and paths.val and paths.val_json:
        loop.evaluator = Evaluator(spec, paths.val, paths.val_json,
                                   loop.config.eval_batch_size, loop.config.eval_nms)
    if isinstance(loop.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        def leave():
            raise SystemExit(143)
        config = tf.distribute.experimental.TerminationConfig(exit_fn=leave)
        loop.preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
            loop.strategy.cluster_resolver, loop.checkpointer.manager, termination_config=config)


def train(spec, config, model_dir, data=None, val_data=None, val_json=None, ckpt=None,
          strategy: str = "default", tpu: str | None = None, precision: str | None = None,
          log=tdata.log_to_stderr, inject_nan_at: int | None = None) -> TrainResult:
    """Train `spec` with the settings `config`; resumes from `model_dir` when it holds a
    checkpoint. Raises TrainError (with an exit code) for anything the user must fix, a
    NaN/Inf stop (code 3) or SIGTERM after saving (code 143)."""
    start = time.perf_counter()
    _check_precision(precision or config.precision)
    model_dir = os.fspath(model_dir)
    try:
        dist = make_strategy(strategy, tpu)
        paths = tdata.resolve_data(spec, config, data, val_data, val_json, log)
    except (DistributeError, tdata.DataError) as e:
        raise TrainError(str(e)) from None
    loop = _make_loop(spec, config, model_dir, paths, dist, ckpt, log, inject_nan_at)
    _run_setup(config, model_dir, spec, loop.chief)
    _attach_extras(loop, spec, paths)
    log(f"training {spec.name} for {loop.total} steps (batch {config.batch_size}, "
        f"{dist.num_replicas_in_sync} replica(s), peak lr {config.scaled_learning_rate():.4g})"
        f" -> {model_dir}")
    step = _run_loop(loop)
    latest = loop.checkpointer.latest if loop.chief else None
    return TrainResult(step, loop.total, latest, loop.metrics, loop.progress.history,
                       loop.skipped, round(time.perf_counter() - start, 1))
