"""Mixed-precision training: the compute settings a training run gives the model, dynamic loss
scaling for float16, and what this host's CPU does with bfloat16 / float16.

``precision`` (training settings, ``--precision``) is one of ``float32``, ``mixed_bfloat16``,
``mixed_float16``, Keras' policy names. Mixed policies compute activations in 16 bits while
variables, optimizer slots, the EMA, batch-norm statistics and the loss stay float32
(``edetgraph.nn.compute``); a checkpoint does not record the precision it was trained in.

float16 has too few exponent bits for small gradients, so ``mixed_float16`` scales the loss
up before the backward pass and the gradients down after it (Keras' LossScaleOptimizer
rule): the scale starts at 2**15, doubles after 2000 steps in a row with finite gradients,
and halves (never below 1) on a step whose gradients are not finite, a step that is then not
applied (it still counts as a step, as in Keras). The scale is checkpointed.
"""
from __future__ import annotations

import tensorflow as tf

from edetgraph.nn.compute import Compute

POLICY_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                 "mixed_float16": "float16"}
INITIAL_SCALE = 2.0 ** 15
GROWTH_STEPS = 2000


def compute_for(config) -> Compute:
    """The model's compute settings for a TrainConfig (its precision and grad_checkpoint)."""
    return Compute(POLICY_DTYPES[config.precision], bool(config.grad_checkpoint))


class LossScale:
    """Dynamic loss scale: ``scale`` (float32) and ``good_steps`` (finite steps in a row),
    both variables so a checkpoint carries them. Create it inside ``strategy.scope()``."""

    def __init__(self, initial: float = INITIAL_SCALE, growth_steps: int = GROWTH_STEPS):
        self.growth_steps = int(growth_steps)
        self.scale = tf.Variable(float(initial), trainable=False, name="loss_scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False,
                                      name="loss_scale_good_steps")

    @property
    def variables(self) -> dict:
        """What checkpoints hold (``loss_scale/scale``, ``loss_scale/good_steps``)."""
        return {"scale": self.scale, "good_steps": self.good_steps}

    def _update(self, scale, good, finite):
        grown = good + 1 >= self.growth_steps
        new_good = tf.where(finite & ~grown, good + 1, tf.zeros_like(good))
        new_scale = tf.where(finite, tf.where(grown, scale * 2.0, scale),
                             tf.maximum(scale / 2.0, 1.0))
        return tf.group(scale.assign(new_scale), good.assign(new_good))

    def update(self, strategy, finite):
        """After a step: grow or halve the scale (cross-replica context; ``finite`` is
        whether this step's gradients were finite)."""
        return strategy.extended.update(self.scale, lambda s, g, f: self._update(s, g, f),
                                        args=(self.good_steps, finite))


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in ``path`` (empty where there is no
    such file, e.g. macOS)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16, or AMX-BF16 tiles)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_has_fp16(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes float16 natively (AVX512-FP16, or AMX-FP16 tiles)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_fp16", "amx_fp16"})


# Measured on an AMD EPYC (AVX2, no bf16/fp16 instructions), 2 cores, a busy machine: CPU
# seconds of a training step of the demo model at 256 px, batch 4, against float32 (0.34 s):
# bfloat16 1.20 s, float16 0.59 s (tools/train_memory.py --speed). Shown to the user.
EMULATED_SLOWDOWN = {"bfloat16": "~3.5x", "float16": "~1.7x"}


def precision_notice(precision: str, on_accelerator: bool, flags: set[str] | None = None):
    """One line to print when a run starts in 16 bits on a CPU that emulates them, else
    None. The run still computes in the dtype asked for: it is slower, not different."""
    dtype = POLICY_DTYPES[precision]
    if dtype == "float32" or on_accelerator:
        return None
    native = cpu_has_bf16(flags) if dtype == "bfloat16" else cpu_has_fp16(flags)
    if native:
        return None
    want = "avx512_bf16/amx_bf16" if dtype == "bfloat16" else "avx512_fp16/amx_fp16"
    return (f"precision {precision}: this CPU has no {want}, so TensorFlow emulates {dtype} "
            f"arithmetic ({EMULATED_SLOWDOWN[dtype]} slower than float32 here); the run "
            f"still computes in {dtype}")
