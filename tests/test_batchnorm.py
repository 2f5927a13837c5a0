"""Training batch norm on one replica runs the fused kernel: it must give what the
textbook formula gives (output, gradients) and move the moving statistics by the biased
batch variance, as the synced path of several replicas does."""
import numpy as np
import pytest
import tensorflow as tf

from edetgraph.nn.layers import BatchNorm


def _bn(momentum):
    bn = BatchNorm("t/bn", 5, momentum=momentum)
    rng = np.random.RandomState(1)
    bn.gamma.assign(rng.rand(5).astype(np.float32) + 0.5)
    bn.beta.assign(rng.randn(5).astype(np.float32))
    return bn


X = np.random.RandomState(0).randn(2, 4, 3, 5).astype(np.float32) * 3 + 1   # n = 24


def test_fused_training_bn_equals_the_formula_with_its_gradients():
    bn = _bn(0.99)
    x = tf.constant(X)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = bn(x, training=True)
        mean, var = tf.nn.moments(x, [0, 1, 2])
        ref = tf.nn.batch_normalization(x, mean, var, bn.beta, bn.gamma, bn.epsilon)
        loss, ref_loss = (tf.reduce_sum(t * tf.sin(t)) for t in (y, ref))
    assert "FusedBatchNorm" in str(tf.function(lambda t: bn(t, training=True))
                                   .get_concrete_function(x).graph.as_graph_def())
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    targets = [x, bn.gamma, bn.beta]
    for got, want in zip(tape.gradient(loss, targets), tape.gradient(ref_loss, targets)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_moving_variance_follows_the_biased_batch_variance():
    bn = _bn(0.0)                  # momentum 0: the moving statistics become the batch's
    bn(tf.constant(X), training=True)
    np.testing.assert_allclose(bn.moving_mean.numpy(), X.mean((0, 1, 2)), rtol=1e-5)
    biased = X.var((0, 1, 2))
    np.testing.assert_allclose(bn.moving_variance.numpy(), biased, rtol=1e-5)
    # The fused kernel's own output is Bessel-corrected, n/(n-1) = 24/23: taken back out.
    assert not np.allclose(bn.moving_variance.numpy(), biased * 24 / 23, rtol=1e-3)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_low_precision_input_keeps_its_dtype_and_float32_statistics(dtype):
    bn = _bn(0.0)
    y = bn(tf.cast(X, dtype), training=True)
    assert y.dtype == dtype and bn.moving_variance.dtype == tf.float32
    np.testing.assert_allclose(bn.moving_mean.numpy(), X.mean((0, 1, 2)), rtol=2e-2, atol=2e-2)
