"""TF primitives the lowering is made of: raw ops in small ``tf.Module``s.

Every variable is created with its full checkpoint name (``scope/kernel``), so the released
checkpoints load by name. Shapes are static NHWC; nothing here depends on Keras, which keeps
the same code usable under XLA (TPU), tf2onnx and the TFLite converter.
"""
from __future__ import annotations

import functools
import zlib

import numpy as np
import tensorflow as tf

from edetgraph.nn.compute import random_mask, replaying, weight

_ON_READ = tf.VariableSynchronization.ON_READ
_MEAN = tf.VariableAggregation.MEAN


def _seed(name: str, base: int) -> list[int]:
    # Per-variable seeds from the name: init is reproducible and independent of build order.
    return [base, zlib.crc32(name.encode()) & 0x7FFFFFFF]


def variable(name: str, shape, init: str = "zeros", *, fan: int = 1, value: float = 0.0,
             seed: int = 0, trainable: bool = True, on_read: bool = False) -> tf.Variable:
    """A float32 variable called exactly ``name``.

    init: ``zeros``, ``ones``, ``const`` (``value``), ``he`` (normal, stddev sqrt(2/fan), the
    EfficientNet conv init), ``vs`` (truncated normal, stddev sqrt(1/fan): variance scaling).
    """
    shape = tuple(int(s) for s in shape)
    if init == "zeros":
        v = tf.zeros(shape)
    elif init == "ones":
        v = tf.ones(shape)
    elif init == "const":
        v = tf.fill(shape, float(value))
    elif init == "he":
        v = tf.random.stateless_normal(shape, _seed(name, seed), stddev=np.sqrt(2.0 / fan))
    elif init == "vs":
        v = tf.random.stateless_truncated_normal(shape, _seed(name, seed),
                                                 stddev=np.sqrt(1.0 / fan) / .87962566)
    else:
        raise ValueError(f"unknown init {init!r} for {name}")
    kw = dict(synchronization=_ON_READ, aggregation=_MEAN) if on_read else {}
    return tf.Variable(v, name=name, trainable=trainable, **kw)


@tf.custom_gradient
def _swish_training(x):
    """``x * sigmoid(x)`` whose gradient reuses the forward's sigmoid and output:
    ``dy * (y + sigmoid(x) (1 - y))`` is four elementwise passes, where ``tf.nn.silu``'s
    (the official's ``tf.nn.swish``) recomputes the sigmoid and takes seven. It keeps the
    sigmoid until the backward pass (one more activation-sized tensor per swish)."""
    sig = tf.sigmoid(x)
    y = x * sig

    def grad(dy):
        return dy * (y + sig * (1.0 - y))

    return y, grad


def activation(x: tf.Tensor, kind: str, training: bool = False) -> tf.Tensor:
    """``kind`` applied to ``x``. Swish in training has a hand-written gradient
    (`_swish_training`); at inference it stays ``x * sigmoid(x)``, the two ops every
    exporter and runtime knows."""
    if kind in ("swish", "silu"):
        return _swish_training(x) if training else x * tf.sigmoid(x)
    if kind == "relu6":
        return tf.nn.relu6(x)
    if kind == "relu":
        return tf.nn.relu(x)
    if kind == "hswish":
        return x * tf.nn.relu6(x + 3.0) / 6.0
    raise ValueError(f"unknown activation {kind!r}")


class Conv(tf.Module):
    """k x k convolution (HWIO kernel), SAME padding, optional bias."""

    def __init__(self, scope: str, cin: int, cout: int, k: int = 1, stride: int = 1,
                 bias: bool = False, init: str = "he", seed: int = 0, kernel_name="kernel"):
        super().__init__(name=None)
        fan = k * k * (cout if init == "he" else cin)
        self.kernel = variable(f"{scope}/{kernel_name}", (k, k, cin, cout), init, fan=fan,
                               seed=seed)
        self.bias = variable(f"{scope}/bias", (cout,)) if bias else None
        self.stride = stride

    def __call__(self, x, training: bool = False):
        if training and self.pointwise_matmul:
            y = _pointwise_matmul(x, weight(self.kernel, x))
        else:
            y = tf.nn.conv2d(x, weight(self.kernel, x), self.stride, "SAME")
        return _bias_add(y, self.bias) if self.bias is not None else y

    @property
    def pointwise_matmul(self) -> bool:
        """Whether training runs this conv as a matrix product: 1x1, stride 1, on a CPU
        with TensorFlow's oneDNN kernels (`_cpu_forms`, `_pointwise_matmul`)."""
        return (self.kernel.shape[0] == self.kernel.shape[1] == 1 and self.stride == 1
                and _cpu_forms())

    def folded(self, x, scale, offset, channels: slice = slice(None)):
        """``bn(self(x))`` with the BN's scale/offset folded into kernel and bias; only the
        output ``channels`` when given."""
        scale, offset = scale[channels], offset[channels]
        bias = offset if self.bias is None else self.bias[channels] * scale + offset
        y = tf.nn.conv2d(x, weight(self.kernel[..., channels] * scale, x), self.stride, "SAME")
        return tf.nn.bias_add(y, weight(bias, y))


def _bias_add(y, bias):
    """``y + bias`` over the channels. In a 16-bit compute dtype the bias's gradient, the
    output gradient summed over batch and space, is summed in float32: TensorFlow's CPU
    ``BiasAddGrad`` sums bfloat16 in bfloat16, and before a batch norm, where the true
    gradient is zero, it returned 16.5 for a sum whose float32 value is 0.24 (2 x 64 x 64
    values, AVX-512 BF16 CPU). The official escapes it where oneDNN fuses ``BiasAddGrad``
    into the conv's filter gradient, which edetgraph's 1x1 matrix-product form has none of;
    XLA (TPU) sums in float32 by itself."""
    if y.dtype == tf.float32:
        return tf.nn.bias_add(y, bias)
    return _bias_add_float32_grad(y, tf.convert_to_tensor(bias))


@tf.custom_gradient
def _bias_add_float32_grad(y, bias):
    def grad(dy):
        return dy, tf.reduce_sum(tf.cast(dy, bias.dtype), list(range(dy.shape.rank - 1)))
    return tf.nn.bias_add(y, tf.cast(bias, y.dtype)), grad


def _pointwise_matmul(x, kernel):
    """A 1x1, stride-1 convolution as ``[B*H*W, Cin] @ [Cin, Cout]``: the training path
    on a CPU where TensorFlow's oneDNN kernels are on (`_cpu_forms`). The product and its two gradients (two more
    products) ran in 0.70x to 0.93x of oneDNN's Conv2D and its gradients on D0's shapes at
    512 (2 threads, AVX-512 EPYC), and D0's float32 train step in 0.87x of its time; with
    oneDNN off (Eigen, whose 1x1 Conv2D is already a contraction) the step was 1.05x, so
    there it stays a Conv2D. Same values up to float rounding (the sums' order). Inference
    and every exported graph keep the Conv2D that runtimes and delegates fuse."""
    shape = tf.shape(x)
    cin, cout = kernel.shape[2], kernel.shape[3]
    y = tf.matmul(tf.reshape(x, [-1, cin]), tf.reshape(kernel, [cin, cout]))
    return tf.reshape(y, tf.concat([shape[:3], [cout]], 0))


class DepthwiseConv(tf.Module):
    def __init__(self, scope: str, ch: int, k: int, stride: int = 1, init: str = "he",
                 seed: int = 0, kernel_name: str = "depthwise_kernel"):
        super().__init__(name=None)
        fan = k * k if init == "vs" else k * k * ch
        self.kernel = variable(f"{scope}/{kernel_name}", (k, k, ch, 1), init, fan=fan, seed=seed)
        self.stride = stride

    def __call__(self, x, training: bool = False):
        k = weight(self.kernel, x)
        if training and self.kernel.shape[0] >= 5 and _cpu_forms() and None not in x.shape[1:]:
            return _depthwise_transposed_grad(x, tf.convert_to_tensor(k), self.stride)
        return tf.nn.depthwise_conv2d(x, k, [1, self.stride, self.stride, 1], "SAME")

    def folded(self, x, scale, offset, channels: slice = slice(None)):
        """``bn(self(x))`` folded; ``x`` holds only the ``channels`` when given."""
        k = self.kernel[:, :, channels] * tf.reshape(scale[channels], [1, 1, -1, 1])
        y = tf.nn.depthwise_conv2d(x, weight(k, x), [1, self.stride, self.stride, 1], "SAME")
        return tf.nn.bias_add(y, weight(offset[channels], y))


def depthwise_filter_grad(x, dy, k: int, stride: int):
    """The gradient of a SAME-padded k x k depthwise convolution's kernel, for input ``x``
    [B, H, W, C] (static H, W, C) and output gradient ``dy``: for each channel, the
    correlation of the padded input with ``dy`` (dilated by the stride) summed over the
    batch, computed as one depthwise convolution whose channels are (image, channel) pairs
    and whose filter is ``dy``. Returns [k, k, C, 1]."""
    _, h, w, c = x.shape
    oh, ow = dy.shape[1], dy.shape[2]
    pads = []
    for size, out in ((h, oh), (w, ow)):
        total = max((out - 1) * stride + k - size, 0)
        pads.append([total // 2, total - total // 2])
    xp = tf.pad(x, [[0, 0], *pads, [0, 0]])
    hp, wp = h + sum(pads[0]), w + sum(pads[1])
    images = tf.reshape(tf.transpose(xp, [1, 2, 0, 3]), [1, hp, wp, -1])
    filters = tf.reshape(tf.transpose(dy, [1, 2, 0, 3]), [oh, ow, -1, 1])
    corr = tf.nn.depthwise_conv2d(images, filters, [1, 1, 1, 1], "VALID",
                                  dilations=[stride, stride] if stride > 1 else None)
    corr = tf.reshape(corr[0, :k, :k, :], [k, k, -1, c])
    return tf.reduce_sum(corr, 2)[..., None]


def _depthwise_transposed_grad(x, kernel, stride: int):
    """``depthwise_conv2d(x, kernel)`` (SAME) whose kernel gradient is
    `depthwise_filter_grad`. oneDNN's DepthwiseConv2dNativeBackpropFilter takes 3x to 7x its
    forward's time for 5x5 kernels (1x to 1.5x for 3x3): on EfficientNet-B0's 5x5 layers
    (D0 at 512, 2 threads, AVX-512 EPYC) this form ran in 0.3x to 0.65x of it, and
    unchanged or slower for 3x3, so only kernels of 5 and more take it, only on a CPU with
    oneDNN (`_cpu_forms`; Eigen's own kernel is fast). Same values up to float rounding."""
    strides = [1, stride, stride, 1]

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=strides,
                padding="SAME")
            return dx, depthwise_filter_grad(x, dy, kernel.shape[0], stride)
        return tf.nn.depthwise_conv2d(x, kernel, strides, "SAME"), grad

    return conv(x, kernel)


class SeparableConv(tf.Module):
    """Depthwise k x k then pointwise 1x1 with bias: Keras SeparableConv2D's variables."""

    def __init__(self, scope: str, cin: int, cout: int, k: int = 3, bias: bool = True,
                 bias_value: float = 0.0, seed: int = 0):
        super().__init__(name=None)
        self.depthwise = DepthwiseConv(scope, cin, k, init="vs", seed=seed)
        self.pointwise = Conv(scope, cin, cout, 1, init="vs", seed=seed,
                              kernel_name="pointwise_kernel")
        self.pointwise.bias = (variable(f"{scope}/bias", (cout,), "const", value=bias_value)
                               if bias else None)

    def __call__(self, x, training: bool = False):
        return self.pointwise(self.depthwise(x), training)

    def folded(self, x, scale, offset):
        return self.pointwise.folded(self.depthwise(x), scale, offset)


class BatchNorm(tf.Module):
    """Batch norm whose training statistics are synchronised across replicas.

    Under a distribution strategy with several replicas (TPU, multi-GPU, multi-worker), the
    batch mean and variance are all-reduced, so every replica normalises with the statistics
    of the global batch (the official TPU "sync BN"). With one replica, training uses the
    fused op (as the official's Keras layer does off TPU); inference uses it too, and
    grappler folds it into the preceding convolution on CPU.
    """

    def __init__(self, scope: str, ch: int, momentum: float = 0.99, epsilon: float = 1e-3):
        super().__init__(name=None)
        self.gamma = variable(f"{scope}/gamma", (ch,), "ones")
        self.beta = variable(f"{scope}/beta", (ch,), "zeros")
        self.moving_mean = variable(f"{scope}/moving_mean", (ch,), "zeros", trainable=False,
                                    on_read=True)
        self.moving_variance = variable(f"{scope}/moving_variance", (ch,), "ones",
                                        trainable=False, on_read=True)
        self.momentum, self.epsilon = momentum, epsilon

    def __call__(self, x, training: bool = False):
        if not training:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, self.moving_mean, self.moving_variance,
                epsilon=self.epsilon, is_training=False)
            return y
        if _replicas() == 1:
            # One replica: the fused kernel (statistics, normalisation and, in the backward
            # pass, FusedBatchNormGrad in one pass each; the official's Keras layer uses it
            # too). It accumulates in float32 whatever x's dtype, and returns the variance
            # with Bessel's correction, n/(n-1), which is taken back out: the moving
            # variance follows the biased batch variance whatever the replica count.
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
            var = var * ((n - 1.0) / tf.maximum(n, 1.0))
            self._update_moving(mean, var)
            return y
        mean, var = self._batch_moments(x)      # float32 whatever the compute dtype
        self._update_moving(mean, var)
        # Scale and offset are worked out in float32, then cast to x's dtype (TF's own
        # batch_normalization does so): no rsqrt of a bfloat16 variance.
        return tf.nn.batch_normalization(x, mean, var, self.beta, self.gamma, self.epsilon)

    def _update_moving(self, mean, var):
        if replaying():     # a checkpointed segment's re-run: the first run updated them
            return
        for moving, value in ((self.moving_mean, mean), (self.moving_variance, var)):
            moving.assign(moving * self.momentum + value * (1.0 - self.momentum))

    def fold(self):
        """(scale, offset) with bn(y) == y * scale + offset at inference."""
        scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
        return scale, self.beta - self.moving_mean * scale

    def _batch_moments(self, x):
        """Mean and biased variance over batch and space, all-reduced across replicas."""
        x32 = tf.cast(x, tf.float32)
        ctx = tf.distribute.get_replica_context()
        if _replicas() == 1:
            mean, var = tf.nn.moments(x32, [0, 1, 2])
        else:
            count = tf.cast(tf.reduce_prod(tf.shape(x32)[:3]), tf.float32)
            local = tf.concat([tf.reduce_sum(x32, [0, 1, 2]), tf.reduce_sum(x32 * x32, [0, 1, 2]),
                               tf.reshape(count, [1])], 0)
            total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)
            ch = x32.shape[-1]
            n = total[-1]
            mean = total[:ch] / n
            var = tf.maximum(total[ch:2 * ch] / n - mean * mean, 0.0)
        return mean, var


def _cpu_forms() -> bool:
    """Whether training takes the forms measured fastest on oneDNN CPU kernels (1x1 convs as
    MatMul, the 5x5 depthwise gradient by correlation): oneDNN on, no GPU, no TPU strategy.
    On accelerators the plain ops stay (a depthwise correlation with a feature-map-sized
    filter was never measured there)."""
    if not _onednn() or _has_gpu():
        return False
    return "TPU" not in type(tf.distribute.get_strategy()).__name__


@functools.cache
def _has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


@functools.cache
def _onednn() -> bool:
    """Whether TensorFlow runs its oneDNN kernels (TF_ENABLE_ONEDNN_OPTS, on by default on
    x86 Linux)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # TF's own flag; no public API
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


def _replicas() -> int:
    ctx = tf.distribute.get_replica_context()
    return ctx.num_replicas_in_sync if ctx is not None else 1


def conv_bn(conv, bn, x, training: bool):
    """``bn(conv(x))``. At inference the BN is folded into the conv's kernel and bias: one
    fused conv+bias op (and one pass over memory) instead of conv, bias add and batch norm."""
    if bn is None:
        return conv(x, training)
    if training:
        return bn(conv(x, training=True), training=True)
    return conv.folded(x, *bn.fold())


def drop_connect(x, survival: float, training: bool):
    """Stochastic depth on a residual branch: drop whole samples, rescale the rest."""
    if not training or survival >= 1.0:
        return x
    shape = [tf.shape(x)[0], 1, 1, 1]
    # Drawn in float32 (survival + u in bfloat16 would round), replayed when recomputed.
    keep = random_mask(lambda: tf.floor(survival + tf.random.uniform(shape)))
    return x / survival * weight(keep, x)


def max_pool(x, in_hw, out_hw):
    """The official downsampling: window = stride + 1, SAME padding."""
    sh = (in_hw[0] - 1) // out_hw[0] + 1
    sw = (in_hw[1] - 1) // out_hw[1] + 1
    return tf.nn.max_pool2d(x, [sh + 1, sw + 1], [sh, sw], "SAME")
