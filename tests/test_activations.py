"""Values and derivatives of every built-in activation, every dtype, both backends."""

import numpy as np
import pytest
import tensorflow as tf

import nestad_tf
from activation_cases import (activation_cases, case_id, expected_y_d, near_breakpoints,
                              sample_inputs)
from conftest import DTYPES, dtype_id, tolerance

CASES = activation_cases()
BACKENDS = ["kernel", "tf"]


def nestad_y_d(name, params, x, backend):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = nestad_tf.activation(x, name, backend=backend, **params)
    d = tape.gradient(y, x)
    return np.asarray(tf.cast(y, tf.float64)), np.asarray(tf.cast(d, tf.float64))


def assert_close(actual, expected, dtype, what):
    tol = tolerance(dtype)
    nan_actual, nan_expected = np.isnan(actual), np.isnan(expected)
    np.testing.assert_array_equal(nan_actual, nan_expected, err_msg=f"{what}: NaN positions differ")
    ok = ~nan_expected
    np.testing.assert_allclose(actual[ok], expected[ok], err_msg=what, **tol)


def assert_close_any(actual, alternatives, dtype, what):
    """Each element must match at least one alternative (one-sided derivatives at breakpoints)."""
    tol = tolerance(dtype)
    matches = np.zeros(actual.shape, bool)
    for expected in alternatives:
        with np.errstate(invalid="ignore"):
            close = np.isclose(actual, expected, **tol) | (np.isnan(actual) & np.isnan(expected))
        matches |= close
    if not matches.all():
        bad = np.flatnonzero(~matches)[:5]
        details = [(actual[i], [a[i] for a in alternatives]) for i in bad]
        raise AssertionError(f"{what}: {len(np.flatnonzero(~matches))} mismatches, e.g. {details}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_values_and_derivatives_match_keras(case, dtype, backend):
    """The kernel against the float64 truth; the TF path against Keras' own numerics.

    The pure-TF path is forward-mode AD of the Keras composite in the compute
    dtype, so it inherits the composite's rounding (e.g. squareplus cancelling
    for x << 0 in float32) and its NaNs at +-inf; the kernel must be accurate and
    get the limits right.
    """
    name, params = case
    x = sample_inputs(name, params, dtype)
    y, d = nestad_y_d(name, params, x, backend)
    reference_dtype = tf.float64 if backend == "kernel" or dtype == tf.float64 else tf.float32
    y_ref, _, d_alternatives = expected_y_d(name, params, x, reference_dtype)
    if backend == "tf":
        finite = np.isfinite(np.asarray(tf.cast(x, tf.float64)))
        y, y_ref, d = y[finite], y_ref[finite], d[finite]
        d_alternatives = [a[finite] for a in d_alternatives]
    # Expected values are rounded to `dtype`, as nestad's results are.
    y_ref = np.asarray(tf.cast(tf.cast(y_ref, dtype), tf.float64))
    d_alternatives = [np.asarray(tf.cast(tf.cast(a, dtype), tf.float64)) for a in d_alternatives]
    assert_close(y, y_ref, dtype, f"{case_id(case)} y")
    assert_close_any(d, d_alternatives, dtype, f"{case_id(case)} f'")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_and_tf_path_agree(case):
    """Both paths in float64 (where both are accurate), at finite inputs off the breakpoints."""
    name, params = case
    x = sample_inputs(name, params, tf.float64, seed=1)
    keep = np.isfinite(np.asarray(x)) & ~near_breakpoints(name, params, x)
    y_kernel, d_kernel = nestad_y_d(name, params, x, "kernel")
    y_tf, d_tf = nestad_y_d(name, params, x, "tf")
    assert_close(y_kernel[keep], y_tf[keep], tf.float64, f"{case_id(case)} y kernel vs tf")
    assert_close(d_kernel[keep], d_tf[keep], tf.float64, f"{case_id(case)} f' kernel vs tf")


def test_nan_in_gives_nan_out():
    x = tf.constant([np.nan, 1.0, np.nan], tf.float32)
    for name, params in CASES:
        y, d = nestad_y_d(name, params, x, "kernel")
        assert np.isnan(y[[0, 2]]).all() and np.isnan(d[[0, 2]]).all(), name
        assert np.isfinite(y[1]) and np.isfinite(d[1]), name


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_compute_gradient_float64(case):
    """tf.test.compute_gradient: analytic Jacobian vs finite differences, away from breakpoints."""
    name, params = case
    spec = nestad_tf.registry.get(name)
    points = np.array(spec.breakpoints(**spec.bind(params)) or [np.inf])
    rng = np.random.default_rng(2)
    values = rng.uniform(-4.0, 4.0, 64)
    values = values[np.min(np.abs(values[:, None] - points[None, :]), axis=1) > 1e-3]
    x = tf.constant(values, tf.float64)
    for backend in BACKENDS:
        theoretical, numerical = tf.test.compute_gradient(
            lambda t: nestad_tf.activation(t, name, backend=backend, **params), [x], delta=1e-6)
        np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{case_id(case)} {backend}")


@pytest.mark.parametrize("name", ["mish", "gelu", "silu"])
def test_empty_scalar_and_high_rank_shapes(name):
    for shape in [(), (0,), (3, 0, 2), (2, 3, 1, 2, 1, 2)]:
        x = tf.random.normal(shape, seed=3)
        y, d = nestad_y_d(name, {}, x, "kernel")
        y_tf, d_tf = nestad_y_d(name, {}, x, "tf")
        assert y.shape == shape and d.shape == shape
        np.testing.assert_allclose(y, y_tf, **tolerance(tf.float32))
        np.testing.assert_allclose(d, d_tf, **tolerance(tf.float32))


def test_non_contiguous_input():
    x = tf.reshape(tf.range(-12.0, 12.0), (4, 6))
    sliced = tf.transpose(x)[::2]
    y, d = nestad_y_d("mish", {}, sliced, "kernel")
    y_ref, d_ref, _ = expected_y_d("mish", {}, sliced)
    np.testing.assert_allclose(y, y_ref, **tolerance(tf.float32))
    np.testing.assert_allclose(d, d_ref, **tolerance(tf.float32))


def test_every_builtin_has_a_kernel_and_a_public_function():
    lib = nestad_tf._loader.load().module
    assert lib is not None, nestad_tf.backend_info()["reason"]
    for name, params in activation_cases():
        spec = nestad_tf.registry.get(name)
        kernel_name, kernel_params = spec.kernel_attrs(spec.bind(params))
        y, d = lib.fused_activation(tf.zeros([2]), activation=kernel_name, params=kernel_params)
        assert y.shape == (2,) and d.shape == (2,)
        if not params and name != "threshold":
            assert callable(getattr(nestad_tf, name))
    for alias in ["swish", "hard_swish"]:
        assert getattr(nestad_tf, alias).activation in ("silu", "hard_silu")
