"""Built-in activations with tensor parameters (variables, one value per channel).

The fused kernels take parameters as numbers; tensor parameters run forward-mode
AD of the activation's reference and must get correct gradients. Parameter
gradients are checked against central finite differences of Keras' own
activation with Python-number parameters, in float64.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestad_tf
from nestad_tf import registry
from activation_cases import activation_cases, case_id, expected_y_d, sample_inputs
from conftest import tolerance

F64 = tolerance(tf.float64)


def _numeric_cases():
    """Cases of activations that have number parameters (not only a bool switch)."""
    cases = []
    for name, params in activation_cases():
        spec = registry.get(name)
        numeric = [p for p in spec.param_names if p not in spec.switch_params]
        if numeric and spec.bind(params).get(numeric[0]) is not None:
            cases.append((name, params))
    cases.append(("threshold", dict(threshold=0.5, default_value=-1.0)))
    return sorted(set((n, tuple(sorted(p.items()))) for n, p in cases))


NUMERIC_CASES = [(name, dict(params)) for name, params in _numeric_cases()]
TENSOR_REFERENCE_CASES = [c for c in activation_cases()
                          if registry.get(c[0]).tensor_reference is not None]


def test_the_cases_cover_the_activations_whose_keras_reference_branches():
    assert {"elu", "leaky_relu", "relu"} <= {name for name, _ in TENSOR_REFERENCE_CASES}
    assert {"celu", "squareplus", "threshold"} <= {name for name, _ in NUMERIC_CASES}


@pytest.mark.parametrize("case", TENSOR_REFERENCE_CASES, ids=case_id)
def test_tensor_reference_equals_the_keras_reference(case):
    name, params = case
    spec = registry.get(name)
    bound = spec.bind(params)
    x = sample_inputs(name, params, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = spec.tensor_reference(x, **bound)
    d = tape.gradient(y, x).numpy()
    expected_y, _, alternatives = expected_y_d(name, params, x)
    np.testing.assert_allclose(y, expected_y, **F64)
    finite = np.isfinite(x.numpy())
    matches = np.zeros(d.shape, bool)
    for alternative in alternatives:
        matches |= np.isclose(d, alternative, **F64) | (np.isnan(d) & np.isnan(alternative))
    assert matches[finite].all(), x.numpy()[finite & ~matches]


def _finite_difference(name, params, param, x, upstream, step=2.0 ** -12):
    """d/dparam of sum(upstream * keras_activation(x; params)), per channel (last axis).

    Keras passes some parameters to TF as float32 attributes (tf.nn.leaky_relu's
    alpha): values and step are exact in float32, so no rounding enters.
    """
    spec = registry.get(name)
    grads = []
    base = np.asarray(params[param], np.float64)
    for channel in range(x.shape[-1]):
        total = []
        for sign in (1.0, -1.0):
            shifted = dict(params)
            values = base.copy()
            values[channel] += sign * step
            # Python numbers per channel: the Keras reference branches on them.
            columns = [spec.reference(x[:, c:c + 1], **{**shifted, param: float(values[c])})
                       for c in range(x.shape[-1])]
            total.append(float(tf.reduce_sum(upstream * tf.concat(columns, axis=1))))
        grads.append((total[0] - total[1]) / (2 * step))
    return np.array(grads)


def _away_from_breakpoints(name, params, x, margin=1e-3):
    """Inputs at least `margin` from every breakpoint (finite differences cross no kink)."""
    spec = registry.get(name)
    points = np.array(spec.breakpoints(**spec.bind(params)), np.float64).reshape(1, 1, -1)
    if not points.size:
        return x
    near = (np.abs(x[..., None] - points) < margin).any(axis=-1)
    return np.where(near, x + 2 * margin, x)


@pytest.mark.parametrize("case", NUMERIC_CASES, ids=case_id)
def test_variable_parameters_per_channel_get_their_gradients(case):
    name, params = case
    spec = registry.get(name)
    bound = spec.bind(params)
    channels = 3
    rng = np.random.default_rng(0)
    x = _away_from_breakpoints(name, bound, rng.normal(0.0, 2.0, (16, channels)))
    x = tf.constant(x, tf.float64)
    upstream = tf.constant(rng.normal(size=(16, channels)), tf.float64)
    for param in [p for p in spec.param_names if p not in spec.switch_params]:
        if bound[param] is None:
            continue
        # Distinct per-channel values around the case's value (same sign).
        values = bound[param] * np.array([1.0, 0.8, 1.25]) if bound[param] else np.array(
            [0.0, 0.1, -0.2])
        values = values.astype(np.float32).astype(np.float64)
        variable = tf.Variable(values, dtype=tf.float64)
        given = {**bound, param: variable}
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = nestad_tf.activation(x, name, **given)
            loss = tf.reduce_sum(upstream * y)
        # Values and input gradients: the constant-parameter activation, per channel.
        for c in range(channels):
            constant = {**bound, param: float(values[c])}
            with tf.GradientTape() as column_tape:
                xc = x[:, c]
                column_tape.watch(xc)
                yc = nestad_tf.activation(xc, name, **constant)
            np.testing.assert_allclose(y[:, c], yc, **F64)
            np.testing.assert_allclose(tape.gradient(loss, x)[:, c],
                                       upstream[:, c] * column_tape.gradient(yc, xc), **F64)
        numeric = _finite_difference(name, {**bound, param: values}, param, x, upstream)
        np.testing.assert_allclose(tape.gradient(loss, variable), numeric, rtol=1e-6, atol=1e-6,
                                   err_msg=f"{name}: d/d{param}")


def test_variable_parameter_inside_tf_function():
    alpha = tf.Variable(0.7)
    x = tf.linspace(-3.0, 3.0, 13)

    @tf.function
    def gradients(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = nestad_tf.activation(x, "elu", alpha=alpha)
        return tape.gradient(y, [x, alpha])

    dx, dalpha = gradients(x)
    expected_dx = tf.where(x > 0, 1.0, 0.7 * tf.exp(x))
    expected_dalpha = tf.reduce_sum(tf.where(x > 0, 0.0, tf.math.expm1(x)))
    np.testing.assert_allclose(dx, expected_dx, **tolerance(tf.float32))
    np.testing.assert_allclose(dalpha, expected_dalpha, **tolerance(tf.float32))


def test_tensor_parameters_are_refused_clearly_where_they_cannot_work():
    x = tf.ones([4])
    with pytest.raises(ValueError, match="alpha is a tensor.*backend='auto' or 'tf'"):
        nestad_tf.activation(x, "elu", backend="kernel", alpha=tf.Variable(1.0))
    with nestad_tf.backend_scope("kernel"), pytest.raises(ValueError, match="Python numbers"):
        nestad_tf.activation(x, "leaky_relu", negative_slope=tf.constant(0.1))
    with pytest.raises(TypeError, match="approximate chooses the formula"):
        nestad_tf.activation(x, "gelu", approximate=tf.constant(True))
    with pytest.raises(ValueError, match="must broadcast to the input shape"):
        nestad_tf.activation(tf.ones([4, 3]), "elu", alpha=tf.Variable([1.0, 2.0]))


@pytest.mark.parametrize("name, param", [("elu", "alpha"), ("leaky_relu", "negative_slope"),
                                         ("relu", "negative_slope"), ("celu", "alpha")])
def test_parametric_activation_learns_builtin_parameters(name, param):
    keras.utils.set_random_seed(0)
    layer = nestad_tf.ParametricActivation(name, trainable_params=[param], **{param: 0.3})
    x = tf.random.normal([32, 4])
    # A target made with a different parameter value: the loss must fall as the layer learns it.
    y_true = registry.get(name).reference(x, **{param: 0.9})
    optimizer = keras.optimizers.Adam(0.05)
    losses = []
    for _ in range(60):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x) - y_true))
        optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_weights),
                                      layer.trainable_weights))
        losses.append(float(loss))
    assert losses[-1] < 0.1 * losses[0], losses
    np.testing.assert_allclose(layer.trainable_weights[0].numpy(), 0.9, atol=0.1)


def test_parametric_activation_refuses_parameters_that_cannot_train():
    with pytest.raises(ValueError, match="approximate=False chooses the formula"):
        nestad_tf.ParametricActivation("gelu", trainable_params="approximate")
    with pytest.raises(ValueError, match=r"max_value=None \(pass e.g. max_value=6.0\)"):
        nestad_tf.ParametricActivation("relu", trainable_params="max_value")
    layer = nestad_tf.ParametricActivation("relu", trainable_params="max_value", max_value=6.0)
    np.testing.assert_allclose(layer(tf.constant([[-1.0, 3.0, 9.0]])), [[0.0, 3.0, 6.0]])


def _trainable_cases():
    """(name, param, params) for every built-in activation and each of its parameters;
    params: the activation's case with the most non-default values (relu's max_value=4.0,
    threshold's two values), as initial values and constants."""
    cases = []
    for spec in registry.builtin_specs():
        params = max((p for n, p in activation_cases() if n == spec.name), key=len)
        cases += [(spec.name, param, params) for param in spec.param_names]
    return cases


# Parameters the activation depends on only through comparisons: its gradient is zero
# wherever it exists, so ParametricActivation refuses to train them.
COMPARISON_ONLY = {("hard_shrink", "threshold"), ("threshold", "threshold")}


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("name, param, params", _trainable_cases(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_builtin_parameter_trains_or_is_refused_clearly(name, param, params, traced):
    """Each parameter as a ParametricActivation weight: its gradient equals TF autodiff of
    the reference with the weight as a tensor, or the constructor says which parameter
    cannot train and why."""
    spec = registry.get(name)
    bound = spec.bind(params)
    if param in spec.switch_params:
        with pytest.raises(ValueError, match=f"{param}=.*chooses the formula"):
            nestad_tf.ParametricActivation(name, trainable_params=[param], **bound)
        return
    if (name, param) in COMPARISON_ONLY:
        with pytest.raises(ValueError, match=f"parameter '{param}' of '{name}' cannot be "
                                             "trainable.*only through comparisons"):
            nestad_tf.ParametricActivation(name, trainable_params=[param], **bound)
        return
    layer = nestad_tf.ParametricActivation(name, trainable_params=[param], dtype="float64",
                                           **bound)
    rng = np.random.default_rng(3)
    x = tf.constant(_away_from_breakpoints(name, bound, rng.normal(0.0, 2.0, (16, 3))))
    upstream = tf.constant(rng.normal(size=(16, 3)))
    layer.build(x.shape)
    weight = layer.trainable_weights[0]
    initial = bound[param] * np.array([1.0, 0.8, 1.25]) if bound[param] else [0.0, 0.1, -0.2]
    weight.assign(initial)
    reference = spec.tensor_reference or spec.reference

    def gradients():
        with tf.GradientTape(persistent=True) as tape:
            y = layer(x)
            y_reference = reference(x, **{**bound, param: tf.convert_to_tensor(weight)})
            loss = tf.reduce_sum(upstream * y)
            loss_reference = tf.reduce_sum(upstream * y_reference)
        return y, y_reference, tape.gradient(loss, weight), tape.gradient(loss_reference, weight)

    y, y_reference, grad, grad_reference = (tf.function(gradients) if traced else gradients)()
    np.testing.assert_allclose(y, y_reference, **F64)
    assert grad_reference is not None and np.any(grad_reference != 0), grad_reference
    np.testing.assert_allclose(grad, grad_reference, **F64, err_msg=f"{name}: d/d{param}")


@pytest.mark.parametrize("name", ["elu", "leaky_relu", "relu"])
def test_a_definition_branching_on_a_parameter_is_refused_at_construction(name):
    """Keras' own elu, leaky_relu and relu use their parameters' values in Python (why
    the registry holds tensor forms of them): as trainable parameters they are refused
    when the layer is made, naming the parameter, not at the first call."""
    keras_definition = dataclasses.replace(registry.get(name), name="test_branching_" + name,
                                           aliases=(), tensor_reference=None)
    registry.register(keras_definition)
    try:
        for param in keras_definition.param_names:
            with pytest.raises(ValueError, match=f"parameter '{param}' of 'test_branching_{name}' "
                                                 "cannot be trainable.*uses its value in Python"):
                nestad_tf.ParametricActivation(keras_definition.name, trainable_params=param,
                                               **({"max_value": 4.0} if name == "relu" else {}))
    finally:
        registry.unregister(keras_definition.name)
