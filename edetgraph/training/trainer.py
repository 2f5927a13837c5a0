"""Training an EfficientDet from a model spec and a training-settings file.

    from edetgraph.graph.spec import load_spec
    from edetgraph.training.config import load_train_config
    result = train(load_spec("demo"), load_train_config("demo"), "runs/demo")

Without ``data`` it trains on the built-in synthetic dataset (generated once into the cache).
The run resumes by itself from the newest checkpoint in ``model_dir``; checkpoints also
carry the EMA weights (what evaluation and export use). See `edetgraph.training` for the
pieces: settings, the host loop, schedule, optimizer/EMA, strategies, input, checkpoints,
progress.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import tensorflow as tf
import yaml

from edetgraph.checkpoints.checkpoint import CheckpointError, load_checkpoint
from edetgraph.checkpoints.integrity import describe, saved_spec, spec_differences
from edetgraph.cli import first_line
from edetgraph.data.labels import LABELS_FILE, labels_json
from edetgraph.data.pipeline import UndecodableData, list_files
from edetgraph.files import (FolderBusy, OutputRefused, disk_full_message, is_disk_full,
                             lock_folder, release_folder)
from edetgraph.task.evaluation import Evaluator
from edetgraph.training import inputs as tdata
from edetgraph.training.checkpointing import Checkpointer, CheckpointMismatch
from edetgraph.training.config import PRECISIONS, TrainConfigError
from edetgraph.training.distribute import (
    DistributeError,
    is_chief,
    is_tpu,
    make_strategy,
    worker_info,
)
from edetgraph.training.loop import Loop, TrainError, run_loop, write_file
from edetgraph.training.precision import precision_notice
from edetgraph.training.progress import Progress
from edetgraph.training.step import build_state, make_train_function

DATA_FILES = "data_files.json"   # the training files the checkpoints' input position is of


@dataclasses.dataclass
class TrainResult:
    step: int                      # steps taken when the run ended
    total_steps: int
    checkpoint: str | None         # newest checkpoint (chief), None elsewhere
    metrics: dict | None           # last COCO evaluation, if any
    history: list                  # logged training metrics
    skipped_steps: int = 0
    seconds: float = 0.0


def _with_precision(config, precision: str | None):
    """The settings with ``--precision`` (when given) in place of the file's."""
    if precision is None or precision == config.precision:
        return config
    if precision not in PRECISIONS:
        raise TrainError(f"--precision {precision!r}: not one of {', '.join(PRECISIONS)}")
    return dataclasses.replace(config, precision=precision)


def check_model_dir(model_dir: str, spec) -> None:
    """Refuse a model dir whose checkpoints belong to another spec, from the spec.yaml a
    run saved there, before any model is built (a restore would fail on the first
    variable of another shape, with a traceback)."""
    saved = saved_spec(model_dir)
    has_checkpoint = tf.io.gfile.exists(os.path.join(model_dir, "checkpoint"))
    if saved is None or not has_checkpoint:
        return
    differs = spec_differences(saved, spec.to_dict())
    if differs:
        raise TrainError(f"--model-dir {model_dir} holds checkpoints of {describe(saved)}, not "
                         f"of {spec.name} ({'; '.join(differs)}); use a new --model-dir")


def _run_setup(config, model_dir: str, spec, chief: bool, labels: dict | None,
               data_files: list) -> None:
    if chief and labels:   # the names travel with the model: infer, eval, exports read them
        write_file(os.path.join(model_dir, LABELS_FILE), labels_json(labels))
    if chief:
        write_file(os.path.join(model_dir, "spec.yaml"), yaml.safe_dump(spec.to_dict(), sort_keys=False))
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "source"}
        write_file(os.path.join(model_dir, "train_config.yaml"),
               yaml.safe_dump(settings, sort_keys=False))
        write_file(os.path.join(model_dir, DATA_FILES), json.dumps(data_files, indent=1))


def _input_changed(model_dir: str, data_files: list) -> bool:
    """Whether the training files differ from those the model dir's checkpoints read (a
    saved input position is only valid for the same files: restoring it on another list
    leaves the iterator cancelled). Unknown (an older or damaged record): changed."""
    try:
        with tf.io.gfile.GFile(os.path.join(model_dir, DATA_FILES)) as f:
            return json.load(f) != data_files
    except (tf.errors.OpError, ValueError):
        return True


INIT_WEIGHTS = ("official", "ema")


def _initialise(ckpt_path, checkpointer: Checkpointer, state, log,
                init_weights: str = "official") -> None:
    """Resume from the model dir, else load --ckpt (finetune), then seed the EMA.

    ``init_weights`` for --ckpt: ``official`` (what the official trainer's restore does)
    loads the checkpoint's raw values into the weights and its ExponentialMovingAverage
    shadows into the EMA (a variable without a shadow starts its EMA at its raw value);
    ``ema`` loads the shadows into the weights and starts the EMA there. Heads of another
    shape keep their fresh values (and their EMA starts at them) either way.
    """
    try:
        resumed = checkpointer.restore(log)
    except CheckpointMismatch as e:
        raise TrainError(str(e)) from None
    if resumed:
        log(f"resumed from {resumed} at step {int(state.step.numpy())}")
        return
    official = init_weights == "official"
    if ckpt_path:
        report = _load(ckpt_path, state.variables, use_ema=False if official else "auto")
        log(report.summary(limit=5).replace("\n", "\n[train]   "))
    if state.ema is not None:
        state.ema.reset()
        if ckpt_path and official:
            report = _load(ckpt_path, state.ema.shadows, use_ema="auto")
            log(f"EMA starts from the checkpoint's {_ema_source(report)}")


def _load(ckpt_path, variables: dict, use_ema):
    try:
        return load_checkpoint(ckpt_path, variables, mode="finetune", use_ema=use_ema)
    except CheckpointError as e:
        raise TrainError(str(e).splitlines()[0]) from None


def _ema_source(report) -> str:
    if not report.used_ema:
        return f"raw values ({len(report.loaded)}; it has no ExponentialMovingAverage shadows)"
    raw = f", {len(report.ema_fallback)} without one from their raw values" if (
        report.ema_fallback) else ""
    return f"ExponentialMovingAverage shadows ({len(report.loaded) - len(report.ema_fallback)}{raw})"


def _reduction_note(config) -> str:
    rule = {"per_replica": "the official TPU trainer's per-core rule",
            "per_replica_sum": "the official Keras trainer's per-core rule"}
    return f", {rule[config.replica_reduction]}" if config.replica_reduction in rule else ""


def _can_checkpoint(obj) -> bool:
    # Single-device iterators are trackable; distributed ones (multi-worker, TPU) are not.
    try:
        tf.train.Checkpoint(probe=obj)
    except ValueError:
        return False
    return True


def _make_loop(spec, config, model_dir, paths, strategy, ckpt, log, inject_nan_at,
               init_weights: str = "official") -> Loop:
    worker, _ = worker_info(strategy)
    chief = worker == 0
    n_train = paths.num_train
    if config.needs_epoch_size() and n_train is None:
        n_train = tdata.count_records(paths.train, log)
    total, warmup = config.total_steps(n_train), config.warmup(n_train)
    seed = 0 if config.seed is None else config.seed
    with strategy.scope():
        state = build_state(spec, config, total, warmup, seed=seed, examples_per_epoch=n_train)
    iterator = iter(tdata.distributed_input(strategy, paths.train, spec, config, config.seed))
    objects = {"variables": state.variables, state.optimizer.checkpoint_key: state.optimizer.slots,
               "global_step": state.step}
    if state.normalizer is not None:      # positives_momentum's moving average
        objects["moving_normalizer"] = state.normalizer.variables
    if state.ema is not None:
        objects["ema"] = state.ema.shadows
    if state.loss_scale is not None:    # mixed_float16: the dynamic loss scale goes on
        objects["loss_scale"] = state.loss_scale.variables
    if config.checkpoint_input:
        if _can_checkpoint(iterator):
            objects["iterator"] = iterator
        else:
            log("this strategy's input iterator cannot be checkpointed; a resumed run "
                "restarts the data stream")
    names = tf.Variable(labels_json(paths.labels or {}), trainable=False, name="labels")
    objects["labels"] = names      # every checkpoint carries the class names (JSON)
    checkpointer = Checkpointer(objects, model_dir, config.keep_checkpoints, state.step,
                                config.checkpoint_every_steps, config.checkpoint_every_minutes,
                                chief, worker)
    if checkpointer.repaired:
        log(checkpointer.repaired)
    data_files = list_files(paths.train)
    checkpointer.input_changed = _input_changed(model_dir, data_files)
    _initialise(ckpt, checkpointer, state, log, init_weights)
    names.assign(labels_json(paths.labels or {}))   # this run's data names them, not the last
    jit = is_tpu(strategy) if config.jit_compile is None else config.jit_compile
    train_fn = make_train_function(strategy, state, config, jit, inject_nan_at)
    progress = Progress(total, config.batch_size, config.log_every_steps,
                        os.path.join(model_dir, "train") if chief else None)
    return Loop(strategy, state, config, train_fn, iterator, checkpointer, progress, total,
                 model_dir, log, train_data=paths.train, chief=chief, data_files=data_files)


def _attach_extras(loop: Loop, spec, paths) -> None:
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
          log=tdata.log_to_stderr, inject_nan_at: int | None = None,
          init_weights: str = "official") -> TrainResult:
    """Train `spec` with the settings `config`; resumes from `model_dir` when it holds a
    checkpoint, else starts from `ckpt` if given (`init_weights`: see `_initialise`).
    Raises TrainError (with an exit code) for anything the user must fix, a NaN/Inf stop
    (code 3) or SIGTERM after saving (code 143)."""
    start = time.perf_counter()
    config = _with_precision(config, precision)
    if init_weights not in INIT_WEIGHTS:
        raise TrainError(f"--init-weights {init_weights}: choose one of {', '.join(INIT_WEIGHTS)}")
    model_dir = os.fspath(model_dir)
    if "://" in model_dir:   # a bucket: reachable at all? (offline, TF retries for ~90 s)
        try:
            tf.io.gfile.exists(model_dir)
        except tf.errors.OpError as e:
            raise TrainError(f"--model-dir {model_dir}: cannot reach it "
                             f"({first_line(e, 200)})") from None
    check_model_dir(model_dir, spec)
    try:
        return _train(spec, config, model_dir, data, val_data, val_json, ckpt, strategy, tpu,
                      log, inject_nan_at, start, init_weights)
    except (OSError, tf.errors.OpError) as e:
        if is_disk_full(e):
            raise TrainError(disk_full_message(model_dir)) from None
        raise
    finally:
        release_folder(model_dir)   # the one-writer lock _train took (a no-op if it did not)


def _train(spec, config, model_dir, data, val_data, val_json, ckpt, strategy, tpu, log,
           inject_nan_at, start, init_weights="official") -> TrainResult:
    try:
        dist = make_strategy(strategy, tpu)
        if "://" not in model_dir and is_chief(dist):   # one writer per model dir
            lock_folder(model_dir, "train")
        paths = tdata.resolve_data(spec, config, data, val_data, val_json, log)
    except (DistributeError, tdata.DataError, FolderBusy, OutputRefused) as e:
        raise TrainError(str(e)) from None
    try:
        loop = _make_loop(spec, config, model_dir, paths, dist, ckpt, log, inject_nan_at,
                          init_weights)
    except (tdata.DataError, TrainConfigError) as e:   # e.g. a var_freeze_expr matching nothing
        raise TrainError(str(e)) from None
    except UndecodableData as e:
        raise TrainError(f"--data {data or paths.train}: {e}") from None
    _run_setup(config, model_dir, spec, loop.chief, paths.labels, loop.data_files)
    notice = precision_notice(config.precision, is_tpu(dist) or bool(
        tf.config.list_physical_devices("GPU")))
    if notice:
        log(notice)
    _attach_extras(loop, spec, paths)
    log(f"training {spec.name} for {loop.total} steps (batch {config.batch_size}, "
        f"{dist.num_replicas_in_sync} replica(s){_reduction_note(config)}, peak lr "
        f"{config.scaled_learning_rate():.4g})"
        f" -> {model_dir}")
    step = run_loop(loop)
    latest = loop.checkpointer.latest if loop.chief else None
    return TrainResult(step, loop.total, latest, loop.metrics, loop.progress.history,
                       loop.skipped, round(time.perf_counter() - start, 1))
