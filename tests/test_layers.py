"""Keras 3 integration: layers, activation objects, XLA, .keras files and SavedModel export."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestad_tf
from nestad_tf._loader import op_type
from conftest import tolerance


def small_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    h = keras.layers.Dense(16, activation=nestad_tf.mish)(inputs)
    h = nestad_tf.layers.Activation("leaky_relu", negative_slope=0.1)(h)
    h = keras.layers.Dense(16, activation=nestad_tf.get("gelu", approximate=True))(h)
    h = nestad_tf.layers.Activation("relu", max_value=6.0, threshold=0.1)(h)
    h = nestad_tf.activation(h, "hard_swish")  # on a symbolic tensor: adds a layer
    outputs = keras.layers.Dense(1)(h)
    return keras.Model(inputs, outputs)


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 12)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")


def test_layer_matches_keras_activation_and_config_round_trips():
    layer = nestad_tf.layers.Activation("elu", alpha=0.5, name="my_elu")
    x = tf.linspace(-3.0, 3.0, 13)
    np.testing.assert_allclose(layer(x), keras.activations.elu(x, alpha=0.5), **tolerance(tf.float32))
    clone = nestad_tf.layers.Activation.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.params == {"alpha": 0.5} and clone.name == "my_elu"
    assert layer.compute_output_shape((None, 3)) == (None, 3)


def test_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="element-wise"):
        nestad_tf.layers.Activation("softmax")
    with pytest.raises(TypeError, match="unexpected"):
        nestad_tf.layers.Activation("mish", alpha=1.0)
    with pytest.raises(ValueError, match="backend"):
        nestad_tf.layers.Activation("mish", backend="gpu")


def _traced_op_types(layer):
    graph = tf.function(
        lambda x: tf.gradients(layer(x), x)).get_concrete_function(tf.TensorSpec([4])).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("scope", ["tf", "kernel"])
def test_layer_follows_backend_scope_unless_given_a_backend(scope):
    if not nestad_tf.backend_info()["kernel_available"]:
        pytest.skip("kernels not loaded")
    fused = op_type("FusedActivation")
    with nestad_tf.backend_scope(scope):
        follows = _traced_op_types(nestad_tf.layers.Activation("mish"))
        pinned_tf = _traced_op_types(nestad_tf.layers.Activation("mish", backend="tf"))
        pinned_kernel = _traced_op_types(nestad_tf.layers.Activation("mish", backend="kernel"))
    assert (fused in follows) == (scope == "kernel")
    assert fused not in pinned_tf and fused in pinned_kernel
    assert nestad_tf.layers.Activation("mish").get_config()["backend"] is None


def test_activation_functions_serialize_as_nestad_objects():
    config = keras.activations.serialize(nestad_tf.gelu)
    restored = keras.activations.deserialize(config)
    assert isinstance(restored, nestad_tf.ActivationFunction) and restored.activation == "gelu"
    leaky = nestad_tf.get("leaky_relu", negative_slope=0.3)
    assert keras.activations.deserialize(keras.activations.serialize(leaky)) == leaky


@pytest.mark.parametrize("jit_compile", [False, True, "auto"])
def test_model_fits_with_and_without_xla(jit_compile):
    x, y = data()
    model = small_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=jit_compile)
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_xla_and_graph_training_give_the_same_losses():
    x, y = data()
    losses = {}
    for jit in (False, True):
        model = small_model()
        model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse", jit_compile=jit)
        losses[jit] = model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False).history["loss"]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


def test_keras_file_round_trip_with_safe_mode(tmp_path):
    x, y = data()
    model = small_model()
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    kinds = [type(l).__name__ for l in restored.layers]
    assert kinds.count("Activation") == 3
    assert isinstance(restored.layers[1].activation, nestad_tf.ActivationFunction)
    restored.fit(x, y, epochs=1, verbose=0)  # still trains


def test_savedmodel_export_runs(tmp_path):
    x, _ = data()
    model = small_model()
    path = os.path.join(tmp_path, "exported")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    np.testing.assert_allclose(served.serve(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_layers_compute_in_half(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = nestad_tf.layers.Activation("mish")
        y = layer(tf.linspace(-3.0, 3.0, 7))
        assert y.dtype == keras.mixed_precision.global_policy().compute_dtype
        np.testing.assert_allclose(tf.cast(y, tf.float32), keras.activations.mish(tf.linspace(-3.0, 3.0, 7)),
                                   **tolerance(y.dtype))
    finally:
        keras.mixed_precision.set_global_policy("float32")
