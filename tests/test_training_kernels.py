"""The training step's hand-written gradients against TensorFlow's own differentiation of the
plain formulas: the swish used in training (`layers._swish_training`) against `tf.nn.silu`,
and the fused focal-loss sum (`losses.focal_loss_sum`, the class loss's path without label
smoothing) against autodiff of `losses.focal_loss` with the one-hot, ignore and background
layout of `class_loss`. Values and gradients, ordinary and extreme logits."""
import numpy as np
import pytest
import tensorflow as tf

from edetgraph.nn import layers
from edetgraph.nn.layers import _swish_training
from edetgraph.task import losses


def _value_and_grad(fn, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y, tape.gradient(y, x)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.bfloat16])
def test_swish_gradient_is_silus(dtype):
    x = tf.constant(np.concatenate([np.linspace(-40, 40, 4001), [0.0, -1e-8, 1e-8]]), dtype)
    y, g = _value_and_grad(_swish_training, x)
    want_y, want_g = _value_and_grad(tf.nn.silu, tf.cast(x, tf.float64))
    tol = {tf.float64: 1e-12, tf.float32: 2e-6, tf.bfloat16: 2e-2}[dtype]
    assert y.dtype == g.dtype == dtype
    np.testing.assert_allclose(tf.cast(y, tf.float64), want_y, rtol=tol, atol=tol)
    np.testing.assert_allclose(tf.cast(g, tf.float64), want_g, rtol=tol, atol=tol)


def _reference_class_loss(logits, target, c, alpha, gamma, normalizer):
    """class_loss as written before the fused path: one-hot, focal_loss, ignore mask."""
    onehot = tf.reshape(tf.one_hot(target, c), tf.shape(logits))
    loss = losses.focal_loss(logits, onehot, alpha, gamma)
    keep = tf.cast(tf.not_equal(target, -2), logits.dtype)
    shape = tf.concat([tf.shape(target), [c]], 0)
    return tf.reduce_sum(tf.reshape(loss, shape) * keep[..., None]) / normalizer


@pytest.mark.parametrize("alpha,gamma,scale", [(0.25, 1.5, 3.0), (0.25, 0.0, 3.0),
                                               (0.4, 2.0, 1.0), (0.25, 1.5, 30.0)])
def test_fused_focal_loss_equals_autodiff_of_the_formula(alpha, gamma, scale):
    rng = np.random.default_rng(0)
    b, h, w, a, c = 2, 6, 5, 3, 11
    logits = tf.constant(rng.normal(0, scale, (b, h, w, a * c)), tf.float64)
    target = tf.constant(rng.integers(-2, c, (b, h, w, a)), tf.int32)   # -2 ignore, -1 bg
    want, want_g = _value_and_grad(
        lambda x: _reference_class_loss(x, target, c, alpha, gamma, 7.0), logits)
    # the fused path in float32, as training runs it
    got, got_g = _value_and_grad(
        lambda x: losses.class_loss([x], [target], c, 7.0, alpha, gamma),
        tf.cast(logits, tf.float32))
    assert np.isfinite(got.numpy()) and np.all(np.isfinite(got_g.numpy()))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-6)
    np.testing.assert_allclose(got_g.numpy(), want_g.numpy(), rtol=1e-5,
                               atol=1e-6 * float(tf.reduce_max(tf.abs(want_g))))
    # an ignored anchor gets no gradient at all, a background one does (unless its logit is
    # so negative that sigmoid(z)^gamma underflows, as at scale 30)
    g = got_g.numpy().reshape(b, h, w, a, c)
    assert np.all(g[target.numpy() == -2] == 0)
    assert scale > 3 or np.all(np.abs(g[target.numpy() == -1]) > 0)


def test_label_smoothing_keeps_the_plain_formula():
    """With smoothing the fused path does not apply: class_loss still equals the formula."""
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(0, 2, (1, 3, 3, 2 * 4)), tf.float32)
    target = tf.constant(rng.integers(-2, 4, (1, 3, 3, 2)), tf.int32)
    onehot = tf.reshape(tf.one_hot(target, 4), tf.shape(logits))
    per = tf.reshape(losses.focal_loss(logits, onehot, 0.25, 1.5, 0.1), [1, 3, 3, 2, 4])
    keep = tf.cast(tf.not_equal(target, -2), tf.float32)[..., None]
    want = tf.reduce_sum(per * keep) / 5.0
    got = losses.class_loss([logits], [target], 4, 5.0, label_smoothing=0.1)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def _grads(fn, x, *variables):
    """(value, d sum(value * r) / d [x, *variables]) for a fixed random r."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        r = tf.random.stateless_normal(tf.shape(y), [3, 4], dtype=y.dtype)
        loss = tf.reduce_sum(y * r)
    return y, tape.gradient(loss, [x, *variables])


def _graph_ops(fn, *args) -> set:
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def _close(a, b, rtol):
    scale = float(tf.reduce_max(tf.abs(b)))
    assert float(tf.reduce_max(tf.abs(a - b))) <= rtol * scale


@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_conv_trains_as_a_matmul_with_the_convs_values(bias, monkeypatch):
    """The training path of a 1x1 conv (a MatMul where oneDNN runs) gives the Conv2D's
    value and gradients (input, kernel, bias); inference keeps the Conv2D, and without
    oneDNN training does too."""
    conv = layers.Conv("t/conv", 24, 40, 1, bias=bias, seed=1)
    if bias:
        conv.bias.assign(tf.random.stateless_normal([40], [1, 2]))
    x = tf.random.stateless_normal([2, 9, 7, 24], [5, 6])
    variables = [conv.kernel] + ([conv.bias] if bias else [])
    y, g = _grads(lambda t: conv(t, training=True), x, *variables)
    want_y, want_g = _grads(lambda t: conv(t), x, *variables)
    _close(y, want_y, 1e-6)
    for a, b in zip(g, want_g):
        _close(a, b, 1e-6)
    if layers._cpu_forms():
        assert "MatMul" in _graph_ops(lambda t: conv(t, training=True), x)
    assert "MatMul" not in _graph_ops(lambda t: conv(t), x)
    monkeypatch.setattr(layers, "_onednn", lambda: False)
    assert "MatMul" not in _graph_ops(lambda t: conv(t, training=True), x)
    monkeypatch.setattr(layers, "_onednn", lambda: True)
    monkeypatch.setattr(layers, "_has_gpu", lambda: True)      # a GPU: the plain ops stay
    assert "MatMul" not in _graph_ops(lambda t: conv(t, training=True), x)


@pytest.mark.parametrize("hw,k,stride", [((17, 12), 5, 1), ((16, 16), 5, 2), ((15, 20), 3, 2),
                                         ((9, 9), 7, 1), ((8, 11), 3, 1), ((5, 5), 5, 2)])
def test_depthwise_filter_gradient_by_correlation_is_tfs(hw, k, stride):
    """`depthwise_filter_grad` (the 5x5 kernels' gradient in training) against TF's
    DepthwiseConv2dNativeBackpropFilter: SAME padding, odd and even sizes, strides 1 and 2."""
    x = tf.random.stateless_normal([3, *hw, 6], [7, 8])
    kernel = tf.random.stateless_normal([k, k, 6, 1], [9, 10])
    strides = [1, stride, stride, 1]
    dy = tf.random.stateless_normal(tf.shape(tf.nn.depthwise_conv2d(x, kernel, strides, "SAME")),
                                    [11, 12])
    want = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=[k, k, 6, 1], out_backprop=dy, strides=strides, padding="SAME")
    _close(layers.depthwise_filter_grad(x, dy, k, stride), want, 2e-6)


@pytest.mark.parametrize("k,stride", [(5, 1), (5, 2), (3, 1)])
def test_depthwise_conv_trains_with_the_native_ops_values(k, stride):
    """A DepthwiseConv's training call (the correlation-form kernel gradient for 5x5 where
    oneDNN runs) gives the values and gradients of plain tf.nn.depthwise_conv2d."""
    dw = layers.DepthwiseConv("t/dw", 8, k, stride, seed=2)
    x = tf.random.stateless_normal([2, 13, 10, 8], [1, 1])
    y, g = _grads(lambda t: dw(t, training=True), x, dw.kernel)
    want_y, want_g = _grads(lambda t: dw(t), x, dw.kernel)
    _close(y, want_y, 0)
    for a, b in zip(g, want_g):
        _close(a, b, 2e-6)
    ops = _graph_ops(lambda t: _grads(lambda u: dw(u, training=True), t, dw.kernel)[1], x)
    native = "DepthwiseConv2dNativeBackpropFilter" in ops
    assert native == (k < 5 or not layers._cpu_forms())
