"""Fused batch normalization + activation (nestad_tf.normalization, layers.BatchNormActivation).

Expected values never come from nestad: they are keras.layers.BatchNormalization
followed by Keras' activation (the registry's reference) in float64 on the same
(already rounded) inputs, and their gradients TF autodiff of that.
"""

import re

import numpy as np
import pytest
import tensorflow as tf
import keras

import nestad_tf
from nestad_tf import normalization, registry
from nestad_tf._loader import load

from activation_cases import activation_cases, case_id
from conftest import DTYPES, dtype_id, tolerance

BACKENDS = ["kernel", "tf"]
CASES = activation_cases()


def _inputs(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[axis]
    z = tf.cast(rng.normal(0.5, 2.0, shape), dtype)
    gamma = tf.constant(rng.uniform(0.5, 1.5, channels), tf.float32)
    beta = tf.constant(rng.normal(0.0, 1.0, channels), tf.float32)
    moving_mean = tf.constant(rng.normal(0.0, 0.5, channels), tf.float32)
    moving_variance = tf.constant(rng.uniform(0.5, 2.0, channels), tf.float32)
    upstream = tf.cast(rng.normal(0.0, 1.0, shape), dtype)
    return z, gamma, beta, moving_mean, moving_variance, upstream


def _expected(name, params, z, gamma, beta, mean, variance, upstream, axis, training, epsilon):
    """(y, dz, dgamma, dbeta) of Keras' BatchNormalization + activation, in float64."""
    layer = keras.layers.BatchNormalization(axis=axis, epsilon=epsilon, dtype="float64")
    layer.build(z.shape)
    layer.set_weights([np.asarray(v, np.float64) for v in (gamma, beta, mean, variance)])
    z64 = tf.cast(z, tf.float64)
    reference = registry.get(name).reference
    with tf.GradientTape() as tape:
        tape.watch(z64)
        y = reference(layer(z64, training=training), **registry.get(name).bind(params))
    dz, dgamma, dbeta = tape.gradient(y, [z64, layer.gamma.value, layer.beta.value],
                                      output_gradients=tf.cast(upstream, tf.float64))
    return y, dz, dgamma, dbeta


def _fused(name, params, z, gamma, beta, mean, variance, upstream, axis, training, epsilon,
           backend):
    with tf.GradientTape() as tape:
        tape.watch([z, gamma, beta])
        y, batch_mean, batch_variance = normalization.batch_norm_activation(
            z, gamma, beta, mean, variance, name, epsilon=epsilon, axis=axis, training=training,
            backend=backend, **params)
    dz, dgamma, dbeta = tape.gradient(y, [z, gamma, beta], output_gradients=upstream)
    return y, dz, dgamma, dbeta, batch_mean, batch_variance


def _close(actual, expected, dtype, what):
    """Within the dtype's tolerance, relative to the largest expected magnitude."""
    tol = tolerance(dtype)
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(np.asarray(tf.cast(actual, tf.float64)), expected,
                               rtol=tol["rtol"], atol=tol["atol"] * scale, err_msg=what)


def _check_against_keras(name, params, dtype, shape, axis, training, backend, epsilon=1e-3):
    z, gamma, beta, mean, variance, upstream = _inputs(shape, axis, dtype)
    expected = _expected(name, params, z, gamma, beta, mean, variance, upstream, axis, training,
                         epsilon)
    *actual, batch_mean, batch_variance = _fused(name, params, z, gamma, beta, mean, variance,
                                                 upstream, axis, training, epsilon, backend)
    assert actual[0].dtype == dtype and actual[1].dtype == dtype
    for what, a, e in zip(("y", "dz", "dgamma", "dbeta"), actual, expected):
        # dgamma and dbeta are float32 sums: their rounding is float32's, not the input's
        _close(a, e, dtype if what in ("y", "dz") else tf.float32, f"{name} {what}")
    if training:
        axes = [a for a in range(len(shape)) if a != axis % len(shape)]
        z64 = tf.cast(z, tf.float64)
        _close(batch_mean, tf.reduce_mean(z64, axes), tf.float32, "batch mean")
        _close(batch_variance, tf.math.reduce_variance(z64, axes), tf.float32, "batch variance")
    else:
        np.testing.assert_array_equal(batch_mean, mean)
        np.testing.assert_array_equal(batch_variance, variance)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_keras_batch_normalization_and_activation(case, dtype, training):
    name, params = case
    _check_against_keras(name, params, dtype, (4, 3, 3, 8), -1, training, "kernel")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis,shape", [(-1, (4, 3, 3, 8)), (1, (4, 8, 3, 3)), (1, (6, 5)),
                                        (-1, (1, 5)), (2, (2, 3, 4, 5)), (0, (7, 3))],
                         ids=["nhwc", "nchw", "dense", "batch-of-1", "axis-2", "axis-0"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("name", ["mish", "silu", "relu", "gelu"])
def test_axes_and_shapes(name, training, axis, shape, backend):
    _check_against_keras(name, {}, tf.float32, shape, axis, training, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_pure_tf_backend_matches_keras(dtype):
    for training in (True, False):
        _check_against_keras("mish", {}, dtype, (4, 3, 3, 8), -1, training, "tf")


def test_large_channels_last_tensor_matches_keras():
    """Enough rows that the statistics are summed in several chunks (and threads)."""
    _check_against_keras("silu", {}, tf.float32, (64, 16, 16, 24), -1, True, "kernel")


def test_results_do_not_depend_on_the_thread_count():
    z, gamma, beta, mean, variance, upstream = _inputs((64, 16, 16, 24), -1, tf.float32)
    first = _fused("mish", {}, z, gamma, beta, mean, variance, upstream, -1, True, 1e-3, "kernel")
    again = _fused("mish", {}, z, gamma, beta, mean, variance, upstream, -1, True, 1e-3, "kernel")
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_edge_values_with_fixed_statistics():
    """inference: each element on its own, so 0, huge, +-inf and NaN map like the activation."""
    values = tf.constant([[0.0, 1e-30, 20.0, -20.0, 1e30, -1e30, np.inf, -np.inf, np.nan]])
    ones, zeros = tf.ones([9]), tf.zeros([9])
    for name in ("mish", "gelu", "relu", "softplus"):
        y, *_ = normalization.batch_norm_activation(values, ones, zeros, zeros, ones, name,
                                                    epsilon=0.0, training=False,
                                                    backend="kernel")
        expected = nestad_tf.get(name, backend="kernel")(values)
        np.testing.assert_array_equal(y, expected, err_msg=name)


def test_nan_in_a_training_batch_gives_nan_like_keras():
    z = tf.constant([[1.0, 2.0], [np.nan, 3.0], [0.5, -1.0]])
    y, mean, _ = normalization.batch_norm_activation(z, None, None, tf.zeros([2]), tf.ones([2]),
                                                     "mish", backend="kernel")
    keras_y = keras.activations.mish(keras.layers.BatchNormalization()(z, training=True))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(keras_y))
    assert np.isnan(mean[0]) and np.isfinite(mean[1])


def test_scale_and_center_off_use_one_and_zero():
    z, gamma, beta, mean, variance, _ = _inputs((8, 5), -1, tf.float32)
    off, *_ = normalization.batch_norm_activation(z, None, None, mean, variance, "gelu")
    explicit, *_ = normalization.batch_norm_activation(z, tf.ones([5]), tf.zeros([5]), mean,
                                                       variance, "gelu")
    np.testing.assert_array_equal(off, explicit)


def test_statistics_are_not_differentiable_and_moving_ones_get_no_gradient():
    z, gamma, beta, mean, variance, _ = _inputs((8, 5), -1, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([z, mean, variance])
        _, batch_mean, batch_variance = normalization.batch_norm_activation(
            z, gamma, beta, mean, variance, "mish", training=False)
        y, m, _ = normalization.batch_norm_activation(z, gamma, beta, mean, variance, "mish")
    assert tape.gradient(m, z) is None
    assert tape.gradient(y, mean) is None and tape.gradient(y, variance) is None


def test_inside_tf_function_matches_eager():
    z, gamma, beta, mean, variance, upstream = _inputs((4, 3, 3, 8), -1, tf.float32)
    eager = _fused("mish", {}, z, gamma, beta, mean, variance, upstream, -1, True, 1e-3,
                   "kernel")
    traced = tf.function(lambda *a: _fused("mish", {}, *a, -1, True, 1e-3, "kernel"))(
        z, gamma, beta, mean, variance, upstream)
    for a, b in zip(eager, traced):
        np.testing.assert_array_equal(a, b)


def test_training_graph_keeps_only_z_for_the_backward_pass():
    """The gradient graph reads z and per-channel vectors from the forward pass, nothing
    else the size of z (no x = BN(z), no f'(x))."""
    graph = tf.Graph()
    with graph.as_default():
        z = tf.compat.v1.placeholder(tf.float32, [16, 9, 9, 8])
        gamma, beta = tf.ones([8]), tf.zeros([8])
        y, _, _ = normalization.batch_norm_activation(z, gamma, beta, tf.zeros([8]), tf.ones([8]),
                                                      "mish", backend="kernel")
        forward_ops = set(graph.get_operations())
        tf.gradients(y, [z, gamma, beta], grad_ys=tf.ones_like(y))
        read = {t.ref() for op in graph.get_operations() if op not in forward_ops
                for t in op.inputs if t.op in forward_ops and t.shape.num_elements() == z.shape.num_elements()}

    def source(t):
        while t.op.type in ("Identity", "IdentityN", "StopGradient"):
            t = t.op.inputs[t.value_index if t.op.type == "IdentityN" else 0]
        return t

    assert {source(r.deref()).ref() for r in read} <= {z.ref()}, [r.deref() for r in read]


# --- bad input ------------------------------------------------------------


def _raw(**overrides):
    lib = load().module
    args = dict(z=tf.ones([4, 3]), gamma=tf.ones([3]), beta=tf.zeros([3]), mean=tf.zeros([3]),
                variance=tf.ones([3]), activation="mish", params=[], epsilon=1e-3, axis=-1,
                training=True)
    args.update(overrides)
    return lib.batch_norm_activation(**args)


@pytest.mark.parametrize("overrides,message", [
    (dict(gamma=tf.ones([4])), "gamma must be a vector of z's size along axis -1 \\(3\\)"),
    (dict(variance=tf.ones([3, 1])), "variance must be a vector"),
    (dict(axis=2), "axis 2 is out of range"),
    (dict(z=tf.ones([])), "out of range for z of shape"),
    (dict(activation="nope"), "unknown activation 'nope'"),
    (dict(epsilon=float("nan")), "epsilon must be finite"),
    (dict(activation="elu", params=[]), "takes 1 parameter"),
])
def test_raw_op_rejects_bad_input(overrides, message):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        _raw(**overrides)


def test_raw_op_rejects_bad_input_in_a_graph():
    with pytest.raises(ValueError, match="beta must be a vector"):
        tf.function(lambda z: _raw(z=z, beta=tf.zeros([5]))).get_concrete_function(
            tf.TensorSpec([None, 3]))


def test_raw_ops_reject_non_float_and_mismatched_dtypes():
    with pytest.raises((TypeError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError)):
        _raw(z=tf.ones([4, 3], tf.int32))
    with pytest.raises((TypeError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError)):
        _raw(z=tf.ones([4, 3], tf.float64))  # float64 z needs float64 statistics
    lib = load().module
    with pytest.raises(tf.errors.InvalidArgumentError, match="dy and z must have the same shape"):
        lib.batch_norm_activation_grad(tf.ones([4, 2]), tf.ones([4, 3]), tf.ones([3]),
                                       tf.zeros([3]), tf.zeros([3]), tf.ones([3]),
                                       activation="mish")


def test_python_api_rejects_bad_input():
    with pytest.raises(TypeError, match="floating-point tensor"):
        normalization.batch_norm_activation(tf.ones([4, 3], tf.int32), None, None,
                                            tf.zeros([3]), tf.ones([3]), "mish")
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        normalization.batch_norm_activation(tf.ones([4, 3]), None, None, tf.zeros([3]),
                                            tf.ones([3]), "mish", axis=3)
    with pytest.raises(TypeError, match="unexpected parameter"):
        normalization.batch_norm_activation(tf.ones([4, 3]), None, None, tf.zeros([3]),
                                            tf.ones([3]), "mish", alpha=1.0)
    for epsilon in (-1e-3, float("inf")):
        with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
            normalization.batch_norm_activation(tf.ones([4, 3]), None, None, tf.zeros([3]),
                                                tf.ones([3]), "mish", epsilon=epsilon,
                                                backend="tf")
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                       match="gamma must be a vector"):
        normalization.batch_norm_activation(tf.ones([4, 3]), tf.ones([2]), None, tf.zeros([3]),
                                            tf.ones([3]), "mish", backend="kernel")


def test_second_order_gradient_through_the_kernel_raises_clearly():
    z = tf.random.normal([8, 4])

    @tf.function
    def second():
        with tf.GradientTape() as outer:
            outer.watch(z)
            with tf.GradientTape() as inner:
                inner.watch(z)
                y, _, _ = normalization.batch_norm_activation(
                    z, None, None, tf.zeros([4]), tf.ones([4]), "mish", backend="kernel")
                loss = tf.reduce_sum(y * y)
            dz = inner.gradient(loss, z)
            total = tf.reduce_sum(dz)
        return outer.gradient(total, z)

    with pytest.raises(nestad_tf.SecondOrderGradientError, match="backend='tf'"):
        second()


# --- under XLA --------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_jit_equals_graph_mode_bit_for_bit_through_custom_calls(dtype, training):
    """Under jit_compile the op pair is two XLA custom calls to the same CPU loops."""
    z, gamma, beta, mean, variance, upstream = _inputs((8, 5, 5, 16), -1, dtype)

    def step(z, gamma, beta, upstream):
        return _fused("mish", {}, z, gamma, beta, mean, variance, upstream, -1, training, 1e-3,
                      "kernel")

    graph = tf.function(step)(z, gamma, beta, upstream)
    jitted = tf.function(step, jit_compile=True)
    for a, b in zip(jitted(z, gamma, beta, upstream), graph):
        np.testing.assert_array_equal(a, b)
    hlo = jitted.experimental_get_compiler_ir(z, gamma, beta, upstream)(stage="optimized_hlo")
    targets = sorted(set(re.findall(r'custom_call_target="(nestad_[a-z_]+)"', hlo)))
    assert targets == ["nestad_batch_norm_activation", "nestad_batch_norm_activation_grad"]


def test_jit_rejects_bad_input_at_compile_time():
    lib = load().module
    bad = tf.function(lambda z: lib.batch_norm_activation(
        z, tf.ones([4]), tf.zeros([3]), tf.zeros([3]), tf.ones([3]), activation="mish"),
        jit_compile=True)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="gamma must be a vector"):
        bad(tf.ones([2, 3]))
