"""Lowering targets: the op forms each runtime runs natively, where TensorFlow offers a choice.

The same weights and the same arithmetic, written for the runtime that will execute them:

| op | ``tf`` (training, SavedModel) | ``tflite`` | ``onnx`` / ``openvino`` |
| --- | --- | --- | --- |
| fusion sum (``add_n``) | AddN | a chain of ADD (XNNPACK has no ADD_N) | Sum |
| nearest upsample | reshape + broadcast (XLA has its gradient) | copies + DEPTH_TO_SPACE, by 2 at a time (delegated; BROADCAST_TO, RESIZE_NEAREST_NEIGHBOR and CONCATENATION of more than 4 inputs are not) | Resize (NCHW-native: no Transpose/Reshape/Expand around it) |
| squeeze-excite mean | mean of rows, then of columns | the same (two MEAN, delegated in float and int8) | the same (two ReduceMean) |
| expand -> depthwise chain of a large MBConv block | one chain | float files: split by channels into 2 or 4 chains of at most 8 MiB, concatenated after the depthwise conv | one chain (OpenVINO fuses the activations into the convs) |

Why the squeeze-excite mean is never one reduction over a whole map: runtimes sum in
their own order, and one sum over a 256x256 map carries enough float32 rounding to move
D0's logits by ~2e-4, beyond what TF float32 itself is from the exact result; sums over a
row or a column stay short and exact enough. (XNNPACK delegates both MEANs; in an int8
file it does not delegate AVERAGE_POOL_2D, so pooling is no alternative.)

Why split a chain by channels: XNNPACK runs one op at a time over the whole tensor, so
the expanded map of a large block (D0's block 2a: 256x256x96 floats, 25 MB) is written by
the conv, read and written by the sigmoid, read twice and written by the multiply, then read
by the depthwise conv, every pass from DRAM. Every op of the chain is per channel after the
expand conv, so groups of channels can run the whole chain one after the other, each group's
maps small enough to stay in the CPU's last-level cache. The arithmetic of every channel is
unchanged. On this project's 2-core machine it made D0's fp32 file 5-9 % faster. int8 maps
are a quarter of the size and stay whole (and the int8 graph, with its triage, unchanged).

``target.ops`` is what ``edetgraph.graph.fusion`` combinations receive as ``tf``: the
TensorFlow module with the target's ``add_n``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

TARGETS = ("tf", "tflite", "onnx", "openvino")


class _Ops:
    """The TensorFlow module as a fusion combination sees it, with the target's add_n."""

    def __init__(self, target: "Target"):
        self._target = target

    def add_n(self, xs):
        return self._target.add_n(xs)

    def __getattr__(self, name):
        return getattr(tf, name)


class Target:
    """The ``tf`` forms; subclasses replace those their runtime does not run natively."""
    name = "tf"

    def __init__(self):
        self.ops = _Ops(self)

    def add_n(self, xs):
        return tf.add_n(xs)

    def upsample(self, x, in_hw, out_hw):
        """Nearest resize as TF1 ``resize_nearest_neighbor`` (no half-pixel centres).

        An exact integer factor is a reshape + broadcast: it has an XLA gradient on every
        device (ResizeNearestNeighborGrad has none on CPU); other factors gather rows and
        columns.
        """
        (ih, iw), (oh, ow) = in_hw, out_hw
        if oh % ih == 0 and ow % iw == 0:
            fh, fw = oh // ih, ow // iw
            c = x.shape[-1]
            y = tf.reshape(x, [-1, ih, 1, iw, 1, c])
            y = tf.broadcast_to(y, [tf.shape(x)[0], ih, fh, iw, fw, c])
            return tf.reshape(y, [-1, oh, ow, c])
        rows, cols = nearest_indices(ih, oh), nearest_indices(iw, ow)
        return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)

    def spatial_mean(self, x):
        """Mean over height and width, keeping both as size 1 (squeeze-excite)."""
        return tf.reduce_mean(tf.reduce_mean(x, [2], keepdims=True), [1], keepdims=True)

    def channel_groups(self, height: int, width: int, channels: int) -> int:
        """Into how many channel groups an MBConv's expand -> depthwise chain is split
        (1: not split)."""
        return 1


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output pixel: ``floor(out * in / out_size)``."""
    return np.floor(np.arange(size_out) * (size_in / size_out)).astype(np.int32)


class _ResizeTarget(Target):
    """Upsampling as the runtime's own nearest resize by an integer factor (its output size
    then follows exactly from its scale), cropped where the map is odd-sized."""

    def upsample(self, x, in_hw, out_hw):
        (ih, iw), (oh, ow) = in_hw, out_hw
        f = -(-oh // ih)
        if f != -(-ow // iw) or not (_crop_matches(ih, oh, f) and _crop_matches(iw, ow, f)):
            return super().upsample(x, in_hw, out_hw)
        # The op itself: its tf.compat.v1.image wrapper adds only a deprecation warning.
        y = tf.raw_ops.ResizeNearestNeighbor(images=x, size=(ih * f, iw * f),
                                             align_corners=False, half_pixel_centers=False)
        return y if (oh, ow) == (ih * f, iw * f) else y[:, :oh, :ow, :]


class TFLiteTarget(Target):
    """``element_bytes``: the size of one activation in the file (4 for float files, 1 for
    int8), which decides the chains split by :meth:`channel_groups`."""
    name = "tflite"
    GROUP_BYTES = 8 * 2 ** 20     # a split chain's expanded map stays within this
    MAX_GROUPS = 4                # XNNPACK delegates a CONCATENATION of at most 4 inputs

    def __init__(self, element_bytes: int = 4):
        super().__init__()
        self.element_bytes = element_bytes

    def channel_groups(self, height: int, width: int, channels: int) -> int:
        """The fewest groups (1, 2 or 4) whose expanded map is at most ``GROUP_BYTES``; 4 if
        none is."""
        g = 1
        while g < self.MAX_GROUPS and \
                height * width * -(-channels // g) * self.element_bytes > self.GROUP_BYTES:
            g *= 2
        return g

    def upsample(self, x, in_hw, out_hw):
        """Nearest upsampling by ``f``: ``f * f`` copies side by side in the channels, then
        DEPTH_TO_SPACE (both delegated; XNNPACK runs no RESIZE_NEAREST_NEIGHBOR), then a crop
        where the map is odd-sized (``2n - 1`` rows upsampled from ``n`` pick exactly the first
        ``2n - 1`` rows of the doubled map)."""
        (ih, iw), (oh, ow) = in_hw, out_hw
        f = -(-oh // ih)
        if f != -(-ow // iw) or not (_crop_matches(ih, oh, f) and _crop_matches(iw, ow, f)):
            return super().upsample(x, in_hw, out_hw)
        y = _repeat_pixels(x, f)
        return y if (oh, ow) == (ih * f, iw * f) else y[:, :oh, :ow, :]

    def add_n(self, xs):
        out = xs[0]
        for x in xs[1:]:
            out = tf.add(out, x)
        return out


def _repeat_pixels(x, f: int):
    """Each pixel repeated ``f x f`` times: by 2 at a time while ``f`` is even (4 copies
    and DEPTH_TO_SPACE each: XNNPACK delegates a CONCATENATION of at most 4 inputs, and
    pixel ``i`` of two doublings is ``(i // 2) // 2 = i // 4``), then the odd rest at once."""
    while f % 2 == 0 and f > 1:
        x = tf.nn.depth_to_space(tf.concat([x] * 4, axis=-1), 2)
        f //= 2
    if f > 1:
        x = tf.nn.depth_to_space(tf.concat([x] * (f * f), axis=-1), f)
    return x


def _crop_matches(size_in: int, size_out: int, f: int) -> bool:
    """Whether upsampling by ``f`` then keeping the first ``size_out`` pixels picks exactly
    :func:`nearest_indices`."""
    return bool(np.array_equal(np.arange(size_out) // f, nearest_indices(size_in, size_out)))


class OnnxTarget(_ResizeTarget):
    name = "onnx"


class OpenVinoTarget(OnnxTarget):
    """OpenVINO reads the ONNX file: the ONNX forms."""
    name = "openvino"


DEFAULT = Target()   # the forms of training and the SavedModel

_BY_NAME = {"tf": Target, "tflite": TFLiteTarget, "onnx": OnnxTarget,
            "openvino": OpenVinoTarget}


def get(name) -> Target:
    """The target called ``name`` (None: ``tf``); a Target is returned as it is."""
    if isinstance(name, Target):
        return name
    try:
        return _BY_NAME[name or "tf"]()
    except KeyError:
        raise ValueError(f"unknown lowering target {name!r} (known: {', '.join(TARGETS)})") \
            from None
