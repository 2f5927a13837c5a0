"""The training step's hand-written gradients against TensorFlow's own differentiation of the
plain formulas: the swish used in training (`layers._swish_training`) against `tf.nn.silu`,
and the fused focal-loss sum (`losses.focal_loss_sum`, the class loss's path without label
smoothing) against autodiff of `losses.focal_loss` with the one-hot, ignore and background
layout of `class_loss`. Values and gradients, ordinary and extreme logits."""
import numpy as np
import pytest
import tensorflow as tf

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
