"""Values and derivatives of every built-in activation, every dtype, both backends;
`nestad_tf.<name>` as a drop-in for `keras.activations.<name>`."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestad_tf
from nestad_tf import registry
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


# --- drop-in for keras.activations: same signature, inputs, dtypes and refusals ---

KERAS_COUNTERPARTS = sorted(
    name for spec in registry.builtin_specs() for name in (spec.name,) + spec.aliases
    if hasattr(keras.activations, name))
NOT_ACTIVATIONS = {"get", "serialize", "deserialize"}


def test_every_elementwise_keras_activation_is_a_nestad_callable():
    keras_names = {name for name, value in vars(keras.activations).items()
                   if inspect.isfunction(value) and name not in NOT_ACTIVATIONS}
    assert keras_names - set(registry.NOT_ELEMENTWISE) == set(KERAS_COUNTERPARTS)
    for name in KERAS_COUNTERPARTS:
        assert isinstance(getattr(nestad_tf, name), nestad_tf.ActivationFunction), name
        assert name in nestad_tf.__all__


def keras_call_arguments(name):
    """Keras' function, its parameter names (signature order) and values to pass.

    The values are those of the activation's case with the most non-default
    parameters (relu: negative_slope=0.1, max_value=4.0, threshold=0.5), so that
    a parameter given in the wrong position changes the result.
    """
    keras_function = getattr(keras.activations, name)
    names = list(inspect.signature(keras_function).parameters)[1:]
    spec = registry.get(name)
    params = max((p for n, p in activation_cases() if n == spec.name), key=len)
    bound = spec.bind(params)
    return keras_function, names, [bound[p] for p in names]


def keras_calls(name):
    """(args, kwargs) to call with: no parameters (if all have defaults), then the
    first k parameters positional and the others by keyword, for every k."""
    keras_function, names, values = keras_call_arguments(name)
    parameters = list(inspect.signature(keras_function).parameters.values())[1:]
    calls = [((), {})] if all(p.default is not p.empty for p in parameters) else []
    calls += [(tuple(values[:k]), dict(zip(names[k:], values[k:])))
              for k in range(len(names) + 1)]
    return list(dict.fromkeys((args, tuple(kwargs.items())) for args, kwargs in calls))


@pytest.mark.parametrize("name", KERAS_COUNTERPARTS)
def test_signature_is_the_keras_signature(name):
    keras_signature = inspect.signature(getattr(keras.activations, name))
    ours = inspect.signature(getattr(nestad_tf, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours if p.kind != p.KEYWORD_ONLY] == [
        (p.name, p.kind, p.default) for p in keras_signature.parameters.values()]
    assert [p.name for p in ours if p.kind == p.KEYWORD_ONLY] == ["backend", "derivative"]


INPUT_VALUES = [-2.7, -1.3, -0.6, -0.2, 0.3, 0.8, 1.6, 3.1, 5.3]  # off every breakpoint
FLOAT_INPUTS = {
    "list": lambda: list(INPUT_VALUES),
    "python_float": lambda: 0.8,
    "numpy_float64": lambda: np.array(INPUT_VALUES),
    "numpy_float32": lambda: np.array(INPUT_VALUES, np.float32),
    **{dtype_id(d): (lambda d=d: tf.constant(INPUT_VALUES, d)) for d in DTYPES},
}


def keras_result(keras_function, x, args, kwargs):
    """Keras' result. Where Keras refuses a Python list or number (its soft_shrink,
    sparse_plus and threshold compare one with a number), nestad converts it as the
    other Keras activations do: then the result for the same values as a tensor."""
    try:
        return tf.convert_to_tensor(keras_function(x, *args, **kwargs))
    except TypeError:
        if not isinstance(x, (list, float)):
            raise
        return tf.convert_to_tensor(keras_function(tf.convert_to_tensor(x), *args, **kwargs))


@pytest.mark.parametrize("kind", sorted(FLOAT_INPUTS))
@pytest.mark.parametrize("name", KERAS_COUNTERPARTS)
def test_keras_calls_give_keras_results(name, kind):
    keras_function = getattr(keras.activations, name)
    x = FLOAT_INPUTS[kind]()
    for args, kwargs in keras_calls(name):
        kwargs = dict(kwargs)
        what = f"{name}(x={kind}, *{args}, **{kwargs})"
        expected = keras_result(keras_function, x, args, kwargs)
        y = getattr(nestad_tf, name)(x, *args, **kwargs)
        assert (y.dtype, y.shape) == (expected.dtype, expected.shape), what
        # Values: against Keras in float64 on the same (rounded) inputs, rounded like y.
        x64 = tf.cast(tf.convert_to_tensor(x), tf.float64)
        truth = tf.cast(tf.cast(keras_function(x64, *args, **kwargs), y.dtype), tf.float64)
        assert_close(np.asarray(tf.cast(y, tf.float64)), np.asarray(truth), y.dtype, what)


INTEGER_INPUTS = {
    "int32": lambda: tf.constant([-2, 0, 3]),
    "numpy_int64": lambda: np.array([-2, 0, 3]),
    "int_list": lambda: [-2, 0, 3],
    "python_int": lambda: 2,
    "uint8": lambda: tf.constant([0, 3], tf.uint8),
    "bool": lambda: tf.constant([True, False]),
}


@pytest.mark.parametrize("kind", sorted(INTEGER_INPUTS))
@pytest.mark.parametrize("name", KERAS_COUNTERPARTS)
def test_integer_and_bool_inputs_behave_as_in_keras(name, kind):
    """No gradient, no f' to keep: Keras' result (linear: x unchanged), or a TypeError
    where Keras refuses the input."""
    keras_function = getattr(keras.activations, name)
    args, kwargs = keras_calls(name)[-1]  # every parameter positional
    x = INTEGER_INPUTS[kind]()
    try:
        expected = keras_function(x, *args)
    except (TypeError, ValueError, tf.errors.InvalidArgumentError):
        with pytest.raises(TypeError, match=f"nestad_tf.{registry.get(name).name} needs a "
                                            "floating-point tensor.*refuses it too"):
            getattr(nestad_tf, name)(x, *args)
        return
    y = getattr(nestad_tf, name)(x, *args)
    assert type(y) is type(expected)
    assert tf.as_dtype(np.asarray(y).dtype) == tf.as_dtype(np.asarray(expected).dtype)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))
    if name == "linear":
        assert y is x


@pytest.mark.parametrize("name", KERAS_COUNTERPARTS)
def test_calls_keras_refuses_are_refused(name):
    keras_function, names, values = keras_call_arguments(name)
    ours = getattr(nestad_tf, name)
    x = tf.constant(INPUT_VALUES)
    wrong_calls = [((*values, 1.0), {}), (tuple(values), {"not_a_parameter": 1.0})]
    if names:
        wrong_calls.append(((values[0],), {names[0]: values[0]}))  # given twice
    if name == "threshold":
        wrong_calls.append(((0.5,), {}))  # default_value missing
    for args, kwargs in wrong_calls:
        with pytest.raises(TypeError):
            keras_function(x, *args, **kwargs)
        with pytest.raises(TypeError, match=rf"nestad_tf\.{registry.get(name).name}\(x"):
            ours(x, *args, **kwargs)


def test_bound_parameters_are_the_defaults_of_the_call():
    x = tf.constant(INPUT_VALUES)
    leaky = nestad_tf.get("leaky_relu", negative_slope=0.1)
    np.testing.assert_allclose(leaky(x), keras.activations.leaky_relu(x, 0.1))
    np.testing.assert_allclose(leaky(x, 0.3), keras.activations.leaky_relu(x, 0.3))
    half_bound = nestad_tf.get("threshold", threshold=0.5)
    assert str(inspect.signature(half_bound)).startswith("(x, threshold=0.5, *, default_value")
    np.testing.assert_allclose(half_bound(x, default_value=-1.0),
                               keras.activations.threshold(x, 0.5, -1.0))
    with pytest.raises(TypeError, match="missing a required argument: 'default_value'"):
        half_bound(x)


def test_positional_parameters_on_symbolic_inputs_build_the_same_layer():
    inputs = keras.Input((len(INPUT_VALUES),))
    model = keras.Model(inputs, nestad_tf.relu(inputs, 0.1, 4.0, 0.5))
    x = np.array([INPUT_VALUES], np.float32)
    np.testing.assert_allclose(model(x), keras.activations.relu(x, 0.1, 4.0, 0.5),
                               **tolerance(tf.float32))
