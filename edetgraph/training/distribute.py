"""Choosing a tf.distribute strategy: default, mirrored (GPUs of one host), multiworker
(from TF_CONFIG) or a TPU found by name through the cluster resolver.

A TPU that cannot be reached is one :class:`DistributeError` line: the resolver raises
URLError (an OSError) for an unknown name, and connecting to a dead grpc address hangs, so
the connection runs in a thread with a time limit.
"""
from __future__ import annotations

import json
import os
import threading

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multiworker")


class DistributeError(RuntimeError):
    """The requested strategy cannot be set up; the message says why in one line."""


def _first_line(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0]


def _with_timeout(fn, seconds: float, what: str):
    result, error = [], []

    def run():
        try:
            result.append(fn())
        except BaseException as e:      # re-raised in the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, daemon=True, name=what)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise DistributeError(f"{what}: no answer after {seconds:.0f} s")
    if error:
        raise error[0]
    return result[0] if result else None


def tpu_strategy(name: str, timeout: float = 60.0):
    """TPUStrategy for the TPU called `name` (or 'local', or a grpc:// address)."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
    except (ValueError, OSError, tf.errors.OpError) as e:
        raise DistributeError(f"cannot find TPU {name!r}: {_first_line(e)}") from None
    try:
        _with_timeout(lambda: tf.config.experimental_connect_to_cluster(resolver), timeout,
                      f"connecting to TPU {name!r}")
        _with_timeout(lambda: tf.tpu.experimental.initialize_tpu_system(resolver), timeout,
                      f"initialising TPU {name!r}")
    except DistributeError:
        raise
    except (ValueError, OSError, RuntimeError, tf.errors.OpError) as e:
        raise DistributeError(f"cannot connect to TPU {name!r}: {_first_line(e)}") from None
    return tf.distribute.TPUStrategy(resolver)


def _check_tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise DistributeError("--strategy multiworker needs TF_CONFIG (cluster + task) in the "
                              "environment")
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        task = cfg["task"]
        if task["type"] not in cfg["cluster"] or not 0 <= int(task["index"]) < len(cfg["cluster"][task["type"]]):
            raise KeyError("task")
    except (ValueError, KeyError, TypeError) as e:
        raise DistributeError(f"TF_CONFIG is not a valid cluster description ({e}): {raw[:200]}") from None
    return {"workers": len(workers), "task": task}


def make_strategy(kind: str = "default", tpu: str | None = None, timeout: float = 60.0):
    """The strategy to train under. `tpu` wins over `kind`."""
    if tpu:
        return tpu_strategy(tpu, timeout)
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multiworker":
        _check_tf_config()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise DistributeError(f"unknown strategy {kind!r}; choose one of {', '.join(STRATEGIES)}")


def is_tpu(strategy) -> bool:
    return isinstance(strategy, (tf.distribute.TPUStrategy,))


def worker_info(strategy) -> tuple[int, int]:
    """(this worker's index, number of workers): input pipelines and who writes files."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or is_tpu(strategy):
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    index = task_id + (1 if task_type == "worker" and "chief" in spec else 0)
    return index, max(1, workers)


def is_chief(strategy) -> bool:
    return worker_info(strategy)[0] == 0
