"""Keras models with nestad activations on Keras' torch and JAX backends: fit, predict,
user activations by forward-mode AD, trainable parameters, convert, memory_report,
.keras files."""

import pytest

from framework_helpers import FRAMEWORK, SKIP_REASON

if FRAMEWORK is None:
    pytest.skip(SKIP_REASON, allow_module_level=True)

import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import nestad_tf  # noqa: E402
from nestad_tf import registry  # noqa: E402
from framework_helpers import (  # noqa: E402
    gradients, layer_gradients, tensor, to_float64, value_and_grad)
import saved_model_helpers  # noqa: E402

# One Dense layer per activation, so that one compiled train step covers them all.
FIT_ACTIVATIONS = [("mish", {}), ("gelu", {}), ("silu", {}), ("hard_silu", {}),
                   ("tanh_shrink", {}), ("elu", {"alpha": 0.5}), ("gelu", {"approximate": True}),
                   ("leaky_relu", {"negative_slope": 0.1}), ("softplus", {}), ("relu", {})]


def _data(seed=0, samples=96, features=12):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, features)).astype("float32")
    y = (np.sin(x[:, :3] * 1.7) + 0.1 * rng.normal(size=(samples, 3))).astype("float32")
    return x, y


def _mlp(activations, seed=0, width=16):
    """A Dense stack whose hidden layers use `activations` (callables), same weights
    for every call with the same seed."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,))
    h = inputs
    for activation in activations:
        h = keras.layers.Dense(width, activation=activation)(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _keras_activation(name, params):
    function = getattr(keras.activations, name)
    return (lambda x: function(x, **params)) if params else function


def _fit(model, x, y, epochs=4):
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model.fit(x, y, batch_size=32, epochs=epochs, shuffle=False, verbose=0).history["loss"]


def _weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]


@pytest.mark.parametrize("derivative", ["exact", "bfloat16"])
def test_fit_matches_the_keras_activations(derivative):
    x, y = _data()
    keras_model = _mlp([_keras_activation(n, p) for n, p in FIT_ACTIVATIONS])
    with warnings.catch_warnings():
        # The kernels run (and compress f'): no "derivative=... is not applied" warning, also
        # not from Keras' shape inference (on torch it runs layers on "meta" tensors).
        warnings.filterwarnings("error", message="nestad_tf: derivative=")
        nestad_model = _mlp([nestad_tf.get(n, derivative=derivative, **p)
                             for n, p in FIT_ACTIVATIONS])
        for a, b in zip(_weights(keras_model), _weights(nestad_model)):
            np.testing.assert_array_equal(a, b)
        keras_loss = _fit(keras_model, x, y)
        nestad_loss = _fit(nestad_model, x, y)
    assert keras_loss[-1] < keras_loss[0]
    # bfloat16: f' rounded to 8 bits of mantissa, the trajectory stays close.
    rtol = 1e-5 if derivative == "exact" else 2e-3
    np.testing.assert_allclose(nestad_loss, keras_loss, rtol=rtol)
    for a, b in zip(_weights(keras_model), _weights(nestad_model)):
        np.testing.assert_allclose(b, a, rtol=50 * rtol, atol=50 * rtol)
    predictions = nestad_model.predict(x, batch_size=32, verbose=0)
    np.testing.assert_allclose(predictions, to_float64(nestad_model(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictions, keras_model.predict(x, batch_size=32, verbose=0),
                               rtol=50 * rtol, atol=50 * rtol)


def test_convert_replaces_where_nestad_keeps_less_and_fits_the_same():
    """convert() measures what each activation keeps on this framework (the tensors
    autograd saves on torch, the VJP residuals on JAX) and replaces those where nestad
    keeps less: mish on both (on torch not gelu or silu, whose Keras versions keep only
    x); the converted model's trajectory is the original's."""
    x, y = _data(seed=1)
    names = ["mish", "gelu", "silu", "relu", "tanh"]
    model = _mlp(names, seed=1)
    converted = nestad_tf.convert(model)
    report = nestad_tf.memory_report(converted)
    replaced = {entry.activation for entry in report if entry.replaced}
    assert "mish" in replaced, str(report)
    if FRAMEWORK == "torch":
        assert not {"gelu", "silu", "relu", "tanh"} & replaced, str(report)
    for entry in report:
        if entry.replaced:
            assert entry.bytes_per_sample < entry.keras_bytes_per_sample, str(report)
        else:
            assert entry.bytes_per_sample == entry.keras_bytes_per_sample, str(report)
    assert report.bytes_per_sample < report.keras_bytes_per_sample
    text = str(report)
    assert "mish" in text and "nestad" in text
    unconverted = nestad_tf.memory_report(model)
    assert not [entry for entry in unconverted if entry.replaced]
    assert unconverted.keras_bytes_per_sample == report.keras_bytes_per_sample
    np.testing.assert_allclose(_fit(converted, x, y), _fit(model, x, y), rtol=1e-5)


# --- user activations by forward-mode AD (keras.ops) ---


@nestad_tf.register_activation("test_frameworks_snake")
def _snake(x, a=1.0):
    """x + sin(a x)^2 / a."""
    return x + keras.ops.sin(a * x) ** 2 / a


def _snake_reference(x, a=1.0):
    return x + keras.ops.sin(a * x) ** 2 / a


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_registered_user_activation_values_and_gradient(dtype):
    x = tensor(np.linspace(-4, 4, 33), dtype)
    y, d = value_and_grad(lambda t: nestad_tf.activation(t, "test_frameworks_snake", a=1.5), x)
    compute = "float64" if dtype == "float64" else "float32"
    y_ref, d_ref = value_and_grad(lambda t: _snake_reference(t, 1.5),
                                  tensor(to_float64(x), compute))
    # Keras' JAX sin computes float64 in float32: then float32's tolerance.
    precision = keras.backend.standardize_dtype(keras.ops.sin(tensor([0.5], compute)).dtype)
    tol = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-12}[
        dtype if precision == compute else precision]
    np.testing.assert_allclose(y, to_float64(tensor(y_ref, dtype)), rtol=tol, atol=tol)
    np.testing.assert_allclose(d, to_float64(tensor(d_ref, dtype)), rtol=tol, atol=tol)
    # The same through every entry point.
    for call in (nestad_tf.get("test_frameworks_snake", a=1.5),
                 nestad_tf.layers.Activation("test_frameworks_snake", a=1.5, dtype=dtype)):
        y_call, d_call = value_and_grad(call, x)
        np.testing.assert_array_equal(y_call, y)
        np.testing.assert_array_equal(d_call, d)


def test_user_activation_with_a_tensor_parameter_gets_its_gradient():
    x = tensor(np.linspace(-3, 3, 24).reshape(4, 6))
    a = tensor(np.linspace(0.5, 1.5, 6))
    dx, da = gradients(lambda t, v: nestad_tf.activation(t, "test_frameworks_snake", a=v), x, a)
    dx_ref, da_ref = gradients(lambda t, v: _snake_reference(t, v), x, a)
    np.testing.assert_allclose(dx, dx_ref, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(da, da_ref, rtol=2e-5, atol=2e-6)
    assert da.shape == (6,)


def test_forward_ad_without_registering():
    swish = nestad_tf.forward_ad(lambda x, beta=1.0: x * keras.ops.sigmoid(beta * x))
    x = tensor(np.linspace(-3, 3, 13), "float64")
    y, d = value_and_grad(lambda t: swish(t, beta=2.0), x)
    y_ref, d_ref = value_and_grad(lambda t: t * keras.ops.sigmoid(2.0 * t), x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    np.testing.assert_allclose(d, d_ref, rtol=1e-12)
    with pytest.raises(ValueError, match="backend='kernel'"):
        swish(x, backend="kernel")


@pytest.mark.parametrize("fn,message", [
    (lambda x: keras.ops.exp(x) / keras.ops.sum(keras.ops.exp(x)), "changed output element"),
    (lambda x: keras.ops.softmax(x, axis=-1), "changed output element"),
    (lambda x: keras.ops.cumsum(x, axis=-1), "changed output element"),
    (lambda x: keras.ops.sum(x, axis=-1), "returned .* of shape"),
], ids=["softmax_by_hand", "softmax", "cumsum", "sum"])
def test_not_elementwise_functions_are_refused(fn, message):
    activation = nestad_tf.forward_ad(fn)
    with pytest.raises(nestad_tf.NotElementwiseError, match=message):
        activation(tensor(np.linspace(-1, 1, 12).reshape(3, 4)))


def test_user_activation_trains_in_a_model():
    x, y = _data(seed=3)
    nestad_model = _mlp([nestad_tf.get("test_frameworks_snake", a=0.8)] * 2, seed=3)
    reference_model = _mlp([lambda t: _snake_reference(t, 0.8)] * 2, seed=3)
    np.testing.assert_allclose(_fit(nestad_model, x, y, epochs=3),
                               _fit(reference_model, x, y, epochs=3), rtol=1e-5)


# --- trainable parameters ---


@pytest.mark.parametrize("name,param,axis,value", [
    ("elu", "alpha", -1, 0.5),
    ("leaky_relu", "negative_slope", -1, 0.2),
    ("relu", "negative_slope", None, 0.1),
    (saved_model_helpers.USER_ACTIVATION, "beta", None, 1.2),
    ("test_frameworks_snake", "a", -1, 0.9),
])
def test_parametric_activation_gradient_matches_autodiff(name, param, axis, value):
    """The layer's gradients (to x and to its weight) against autodiff of the definition
    (the tensor-parameter form of the Keras reference, or the user's function)."""
    layer = nestad_tf.ParametricActivation(name, trainable_params=[param], axis=axis,
                                           **{param: value})
    values = np.random.default_rng(4).normal(0, 2, (5, 6))
    values[0, :3] = 0.0  # the kinks of elu, leaky_relu, relu: one-sided derivatives
    x = tensor(values)
    layer.build(x.shape)
    weight = layer.parameter_weights[param]
    weight.assign(np.random.default_rng(5).uniform(0.6, 1.4, weight.shape).astype("float32")
                  * value)
    spec = registry.get(name)
    reference = spec.tensor_reference or spec.reference

    def reference_fn(t, w):
        return reference(t, **dict(layer.params, **{param: w}))

    w = tensor(to_float64(weight.value))  # shape (6,) broadcasts along the last axis, () too
    dx, (dw,) = layer_gradients(layer, x)
    dx_ref, dw_ref = gradients(reference_fn, x, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(dw, dw_ref, rtol=2e-5, atol=2e-5)
    assert dw.shape == tuple(weight.shape)
    np.testing.assert_allclose(to_float64(layer(x)), to_float64(reference_fn(x, w)),
                               rtol=2e-5, atol=2e-6)


def test_parametric_activation_trains():
    x, y = _data(seed=6)
    keras.utils.set_random_seed(6)
    inputs = keras.Input((12,))
    h = keras.layers.Dense(16)(inputs)
    layer = nestad_tf.ParametricActivation("elu", trainable_params=["alpha"], alpha=1.0)
    h = keras.layers.Dense(16)(layer(h))
    user = nestad_tf.ParametricActivation(saved_model_helpers.USER_ACTIVATION,
                                          trainable_params=["beta"], axis=None)
    model = keras.Model(inputs, keras.layers.Dense(3)(user(h)))
    alpha_before = to_float64(layer.parameter_weights["alpha"].value)
    losses = _fit(model, x, y, epochs=5)
    assert losses[-1] < losses[0]
    assert not np.allclose(to_float64(layer.parameter_weights["alpha"].value), alpha_before)
    assert float(to_float64(user.parameter_weights["beta"].value)) != 1.0


def test_parametric_activation_refuses_parameters_that_cannot_train():
    with pytest.raises(ValueError, match="chooses the formula"):
        nestad_tf.ParametricActivation("gelu", trainable_params=["approximate"])
    with pytest.raises(ValueError, match="cannot be trainable"):
        nestad_tf.ParametricActivation("hard_shrink", trainable_params=["threshold"])
    with pytest.raises(ValueError, match="need a number as initial value"):
        nestad_tf.ParametricActivation("relu", trainable_params=["max_value"])
    with pytest.raises(ValueError, match="trainable_params must name parameters"):
        nestad_tf.ParametricActivation("elu", trainable_params=["beta"])


# --- .keras files on this backend ---


def test_save_and_load_on_this_backend(tmp_path):
    saved_model_helpers.save(str(tmp_path), FRAMEWORK)
    model = saved_model_helpers.load_and_check(str(tmp_path), FRAMEWORK)
    x = saved_model_helpers.inputs()
    labels = np.zeros((x.shape[0], 3), "float32")
    losses = _fit(model, x, labels, epochs=2)  # the loaded model trains
    assert np.all(np.isfinite(losses))
