"""The live progress line (step, loss, images/s, ETA) and TensorBoard scalars."""
from __future__ import annotations

import math
import sys

import tensorflow as tf
from tensorflow.core.framework import summary_pb2


def _scalar_metadata() -> bytes:
    # What TensorBoard's scalar summary writes, without needing the tensorboard package
    # (tf.summary.scalar refuses to run when it is not installed).
    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    return meta.SerializeToString()


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


_SCALAR_METADATA = _scalar_metadata()


class Progress:
    """Prints one line per `log_every` steps (rewritten in place on a terminal between
    them) and writes the same numbers to TensorBoard under ``<model_dir>/train``.

    Throughput leaves out the first call of a run, which includes tracing the step.
    """

    def __init__(self, total_steps: int, batch_size: int, log_every: int, logdir=None,
                 stream=None):
        self.total, self.batch, self.every = total_steps, batch_size, log_every
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.writer = tf.summary.create_file_writer(str(logdir)) if logdir else None
        self.last_logged = None
        self.timed_steps, self.timed_seconds = 0, 0.0
        self.calls = 0
        self.partial = False          # an in-place line is showing (terminal only)
        self.history: list[dict] = []

    def rate(self) -> float:
        """Recent images per second (nan until a call after the first has finished)."""
        return self.batch * self.timed_steps / self.timed_seconds if self.timed_seconds else math.nan

    def update(self, step: int, steps_run: int, seconds: float, metrics: dict) -> None:
        """Record a host call that ran `steps_run` steps in `seconds` and ended at `step`."""
        self.calls += 1
        if self.calls > 1:
            self.timed_steps += steps_run
            self.timed_seconds += seconds
        if self.last_logged is None:
            self.last_logged = step - steps_run
        due = step - self.last_logged >= self.every or step >= self.total
        line = self._line(step, metrics)
        if due:
            self.last_logged = step
            values = {k: v for k, v in metrics.items() if k != "ok"}
            values["images_per_sec"] = self.rate()
            self.history.append({"step": step, **values})
            self.scalars(step, values)
            print(("\r" if self.tty else "") + line, file=self.stream, flush=True)
            self.partial = False
        elif self.tty:
            print("\r" + line, end="", file=self.stream, flush=True)
            self.partial = True

    def _line(self, step: int, m: dict) -> str:
        rate = self.rate()
        eta = (self.total - step) * self.batch / rate if rate == rate and rate > 0 else math.inf
        parts = [f"step {step}/{self.total}", f"loss {m['loss']:.4f}",
                 f"(cls {m['cls_loss']:.4f} box {m['box_loss']:.5f})", f"lr {m['lr']:.4g}",
                 f"{rate:.1f} img/s" if rate == rate else "-- img/s", f"ETA {_eta(eta)}"]
        return "  ".join(parts)

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    tf.summary.write(prefix + name, tf.constant(value, tf.float32),
                                     metadata=_SCALAR_METADATA)
        self.writer.flush()

    def message(self, text: str) -> None:
        """A line of its own (ends an in-place progress line first)."""
        print(("\n" if self.partial else "") + text, file=self.stream, flush=True)
        self.partial = False
