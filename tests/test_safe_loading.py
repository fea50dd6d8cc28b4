"""Safe loading: .keras files load with safe_mode=True; crafted configs are refused.

A `.keras` file is untrusted input. nestad registers three classes with Keras
("nestad_tf>ActivationFunction", "nestad_tf>Activation", "nestad_tf>ParametricActivation");
a crafted config could try to use them to reach arbitrary Python callables: a module
path as the activation name, a serialized function where a name or a number belongs,
extra keys. Each must be refused with an error that says what is wrong, and nothing
named in the file may run (a sentinel function records any call).
"""

import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestad_tf

CALLS = []


def sentinel(*args, **kwargs):
    """Referenced by the crafted configs: if anything calls it, loading ran foreign code."""
    CALLS.append((args, kwargs))
    return args[0] if args else None


def _function(module, name):
    return {"module": module, "class_name": "function", "config": name,
            "registered_name": "function"}


SENTINEL = _function(__name__, "sentinel")
USER_ACTIVATION = "safe_loading_test_swish"  # registered here, as a user's module would

nestad_tf.register_activation(USER_ACTIVATION, lambda x, beta=1.0: x * tf.sigmoid(beta * x),
                              overwrite=True)
OS_SYSTEM = _function("os", "system")


def _activation_function(config):
    return {"module": "nestad_tf.activations", "class_name": "ActivationFunction",
            "config": config, "registered_name": "nestad_tf>ActivationFunction"}


def _layer(config, class_name="Activation", module="nestad_tf.layers"):
    return {"module": module, "class_name": class_name,
            "config": dict({"name": "crafted", "trainable": True}, **config),
            "registered_name": f"nestad_tf>{class_name}"}


# id: (crafted object config, fragment of the error that must be raised)
CRAFTED = {
    "module_path_as_activation_name": (
        _activation_function({"activation": "os.system"}), "unknown activation 'os.system'"),
    "builtin_name_as_activation_name": (
        _layer({"activation": "__import__"}), "unknown activation '__import__'"),
    "function_as_activation_name": (
        _activation_function({"activation": SENTINEL}), "activation name must be a string"),
    "os_system_as_layer_activation": (
        _layer({"activation": OS_SYSTEM}), "activation name must be a string"),
    "extra_key_in_function_config": (
        _activation_function({"activation": "mish", "command": "touch /tmp/pwned"}),
        "unexpected parameter(s) ['command']"),
    "extra_key_in_layer_config": (
        _layer({"activation": "elu", "alpha": 1.0, "on_load": SENTINEL}),
        "unexpected parameter(s) ['on_load']"),
    "function_as_parameter": (
        _activation_function({"activation": "relu", "max_value": SENTINEL}),
        "parameter 'max_value' of activation 'relu' must be a number, a bool or None"),
    "function_as_layer_parameter": (
        _layer({"activation": "elu", "alpha": OS_SYSTEM}),
        "parameter 'alpha' of activation 'elu' must be a number, a bool or None"),
    "string_as_parameter": (
        _layer({"activation": "leaky_relu", "negative_slope": "__import__('os')"}),
        "parameter 'negative_slope' of activation 'leaky_relu' must be a number"),
    "list_as_parameter": (
        _activation_function({"activation": "celu", "alpha": [1, SENTINEL]}),
        "parameter 'alpha' of activation 'celu' must be a number"),
    "function_as_backend": (
        _activation_function({"activation": "mish", "backend": SENTINEL}), "backend must be one of"),
    "module_path_as_backend": (
        _layer({"activation": "mish", "backend": "os.system"}), "backend must be one of"),
    "parametric_function_as_parameter": (
        _layer({"activation": USER_ACTIVATION, "trainable_params": ["beta"], "beta": SENTINEL},
               class_name="ParametricActivation", module="nestad_tf.forward_ad"),
        f"parameter 'beta' of activation '{USER_ACTIVATION}' must be a number"),
    "user_activation_function_as_parameter": (
        _activation_function({"activation": USER_ACTIVATION, "beta": OS_SYSTEM}),
        f"parameter 'beta' of activation '{USER_ACTIVATION}' must be a number"),
    "nestad_internal_function_as_dense_activation": (
        {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
         "config": {"units": 2, "activation": _function("nestad_tf._loader", "_reset_for_tests")}},
        ""),  # refused by Keras itself; nestad's modules give no way around safe_mode
}


@pytest.fixture(autouse=True)
def no_calls():
    CALLS.clear()
    yield
    assert not CALLS, f"loading ran a function named in the file: {CALLS}"


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_config_is_refused(case):
    config, fragment = CRAFTED[case]
    with pytest.raises((TypeError, ValueError)) as error:
        keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert fragment in str(error.value), str(error.value)[:2000]


def _model_with_every_nestad_object():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation=nestad_tf.get("leaky_relu", negative_slope=0.1))(inputs)
    x = nestad_tf.layers.Activation("relu", max_value=4.0, threshold=-0.5, negative_slope=0.05)(x)
    x = keras.layers.Dense(8, activation=nestad_tf.gelu)(x)
    x = nestad_tf.layers.Activation("squareplus", b=2.0, backend="tf")(x)
    x = nestad_tf.ParametricActivation(USER_ACTIVATION, trainable_params=["beta"], axis=-1)(x)
    x = nestad_tf.layers.Activation(USER_ACTIVATION, beta=1.5)(x)
    x = keras.layers.Dense(8, activation=nestad_tf.get("threshold", threshold=0.1,
                                                       default_value=-1.0))(x)
    outputs = keras.layers.Dense(1, activation=nestad_tf.get("celu", alpha=0.5))(x)
    return keras.Model(inputs, outputs)


def test_every_nestad_object_round_trips_with_safe_mode(tmp_path):
    model = _model_with_every_nestad_object()
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-7)
    for original, loaded in zip(model.layers, restored.layers):
        assert type(original) is type(loaded)
        assert original.get_config() == loaded.get_config()


def _rewrite_config(path, rewrite):
    with zipfile.ZipFile(path) as archive:
        contents = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(contents["config.json"])
    rewrite(config)
    contents["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def _nestad_layer_configs(config):
    """Every nestad object config inside a saved model config."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if str(node.get("registered_name", "")).startswith("nestad_tf>"):
                found.append(node["config"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


@pytest.mark.parametrize("tamper,fragment", [
    (lambda c: c.update(activation="os.system"), "unknown activation 'os.system'"),
    (lambda c: c.update(activation=SENTINEL), "activation name must be a string"),
    # ParametricActivation passes unknown keys to keras.layers.Layer, which names them.
    (lambda c: c.update(on_load=SENTINEL), ("unexpected parameter", "Unrecognized keyword")),
])
def test_tampered_keras_file_is_refused(tmp_path, tamper, fragment):
    model = _model_with_every_nestad_object()
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    for index in range(len(_nestad_layer_configs(model.get_config()))):
        tampered = os.path.join(tmp_path, f"tampered{index}.keras")
        with open(path, "rb") as src, open(tampered, "wb") as dst:
            dst.write(src.read())
        _rewrite_config(tampered, lambda config: tamper(_nestad_layer_configs(config)[index]))
        with pytest.raises((TypeError, ValueError)) as error:
            keras.models.load_model(tampered, safe_mode=True)
        fragments = (fragment,) if isinstance(fragment, str) else fragment
        assert any(f in str(error.value) for f in fragments), str(error.value)[:2000]


def test_loaded_model_trains_and_matches_gradients(tmp_path):
    model = _model_with_every_nestad_object()
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    x = tf.random.normal((16, 6), seed=4)
    grads = []
    for m in (model, restored):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(m(x, training=True))
        grads.append(tape.gradient(loss, m.trainable_variables))
    for original, loaded in zip(*grads):
        np.testing.assert_allclose(loaded.numpy(), original.numpy(), rtol=1e-5, atol=1e-6)
