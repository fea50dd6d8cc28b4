"""A Keras model holding every kind of nestad object, saved and loaded as `.keras`.

Importing this module registers the user activation the model uses (as a user's
own module would, before loading a model). Used by test_framework_models.py (save
and load on one backend) and, as a script, by tests/test_frameworks.py to save a
model on one Keras backend and load it on another:

    KERAS_BACKEND=torch python tests/frameworks/saved_model_helpers.py DIR \
        --load tensorflow --save torch

loads DIR/tensorflow.keras, checks its predictions on DIR/inputs.npy against
DIR/tensorflow.npy, then saves DIR/torch.keras and DIR/torch.npy.
"""

import argparse
import os
import sys

import keras
import numpy as np

import nestad_tf

USER_ACTIVATION = "test_frameworks_swish_beta"


def swish_beta(x, beta=1.0):
    """x * sigmoid(beta * x), written with keras.ops: it runs on every backend."""
    return x * keras.ops.sigmoid(beta * x)


if USER_ACTIVATION not in nestad_tf.available_activations():
    nestad_tf.register_activation(USER_ACTIVATION, swish_beta)

_FEATURES = 6


def build_model(seed: int = 0) -> keras.Model:
    """Dense layers with nestad activations as `activation=` (built-in and user), a
    nestad Activation layer and two ParametricActivations (built-in and user)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((_FEATURES,))
    h = keras.layers.Dense(8, activation=nestad_tf.mish)(inputs)
    h = keras.layers.Dense(8, activation=nestad_tf.get("leaky_relu", negative_slope=0.1,
                                                       derivative="full"))(h)
    h = nestad_tf.layers.Activation("gelu", approximate=True, derivative="uint8")(h)
    h = keras.layers.Dense(8, activation=nestad_tf.get(USER_ACTIVATION, beta=0.7))(h)
    h = nestad_tf.ParametricActivation("elu", trainable_params=["alpha"], alpha=0.5)(h)
    h = nestad_tf.ParametricActivation(USER_ACTIVATION, trainable_params=["beta"], axis=None)(h)
    h = nestad_tf.layers.Activation(USER_ACTIVATION, beta=1.5)(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # trained-looking parameters, not the initial values
        if isinstance(layer, nestad_tf.ParametricActivation):
            for weight in layer.parameter_weights.values():
                weight.assign(rng.uniform(0.6, 1.4, weight.shape).astype("float32"))
    return model


def inputs(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 2.0, (16, _FEATURES)).astype("float32")


def predict(model, x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float64)


def save(directory: str, name: str, seed: int = 0) -> keras.Model:
    """Saves build_model(seed) as DIR/<name>.keras with its predictions DIR/<name>.npy."""
    model = build_model(seed)
    path = os.path.join(directory, "inputs.npy")
    if not os.path.exists(path):
        np.save(path, inputs())
    model.save(os.path.join(directory, f"{name}.keras"))
    np.save(os.path.join(directory, f"{name}.npy"), predict(model, np.load(path)))
    return model


def load_and_check(directory: str, name: str) -> keras.Model:
    """Loads DIR/<name>.keras (safe_mode=True) and checks its predictions."""
    model = keras.saving.load_model(os.path.join(directory, f"{name}.keras"))
    expected = np.load(os.path.join(directory, f"{name}.npy"))
    actual = predict(model, np.load(os.path.join(directory, "inputs.npy")))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6,
                               err_msg=f"{name}.keras loaded on {keras.backend.backend()}")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Activation", "ParametricActivation"} <= kinds, kinds
    activation = model.layers[1].activation
    assert isinstance(activation, nestad_tf.ActivationFunction), activation
    return model


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--load", help="the backend whose saved model to load and check")
    parser.add_argument("--save", help="save this backend's model under this name")
    args = parser.parse_args(argv)
    if args.load:
        load_and_check(args.directory, args.load)
        print(f"loaded {args.load}.keras on {keras.backend.backend()}: predictions match")
    if args.save:
        save(args.directory, args.save, seed=len(args.save))
        print(f"saved {args.save}.keras on {keras.backend.backend()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
