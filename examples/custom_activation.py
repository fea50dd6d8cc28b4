"""Define a new activation as ordinary TF code; training keeps only its f'(x).

The activation (Smish-like, x * tanh(log(1 + sigmoid(beta x))), with a
learnable `beta` per channel in one layer) is written with plain TensorFlow ops. `register_activation`
makes it a nestad activation: f'(x) comes from forward-mode AD during the
forward pass and is the only tensor the backward pass keeps. The script trains
an MLP on scikit-learn's digits, saves it as a .keras file, reloads it with
safe_mode=True, and compares the peak memory of one training step with the
same model using the plain TF function (Keras then keeps every intermediate).

    python examples/custom_activation.py [--width 1024] [--batch 1024]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Allocator peaks (get_memory_info) on every x86 CPU: TensorFlow keeps them only in its
# BFC allocator, the default only where oneDNN is on (AVX-512 CPUs; not on e.g. AMD EPYC).
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import nestad_tf  # noqa: E402


def smish(x, beta=1.0):
    """x * tanh(log(1 + sigmoid(beta x)))"""
    return x * tf.tanh(tf.math.log1p(tf.sigmoid(beta * x)))


# Registered at import time of the defining module, so that a saved model
# finds "smish" again when it is loaded.
nestad_smish = nestad_tf.register_activation("smish", smish, overwrite=True)


def build_model(activation, width, depth, learnable_layer):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    h = inputs
    for _ in range(depth):
        h = keras.layers.Dense(width, activation=activation)(h)
    if learnable_layer:  # one layer with a trainable `beta` per channel
        h = keras.layers.Dense(width)(h)
        h = nestad_tf.ParametricActivation("smish", trainable_params="beta")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def step_peak_mib(model, x, y):
    model.train_on_batch(x, y)  # trace the train function first
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    start = time.perf_counter()
    model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    digits = load_digits()
    x = np.tile((digits.data / 16.0).astype("float32"), (2, 1))
    y = np.tile(digits.target, 2)

    results = {}
    for label, activation in [("plain TF composite", smish), ("nestad forward_ad", nestad_smish)]:
        model = build_model(activation, args.width, args.depth, learnable_layer=False)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        results[label] = step_peak_mib(model, x[: args.batch], y[: args.batch])

    model = build_model(nestad_smish, args.width, args.depth, learnable_layer=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=args.batch, epochs=args.epochs, verbose=0)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "smish_mlp.keras")
        model.save(path)
        reloaded = keras.models.load_model(path, safe_mode=True)
    same = np.allclose(reloaded.predict(x[:256], verbose=0), model.predict(x[:256], verbose=0),
                       rtol=1e-5, atol=1e-5)
    learned_beta = model.layers[-2].get_weights()[0]

    print(f"MLP {args.depth} x Dense({args.width}) + smish, batch {args.batch}: "
          "one training step")
    for label, (peak, seconds) in results.items():
        print(f"  {label:20s} peak {peak:7.1f} MiB   {seconds * 1e3:7.1f} ms")
    print(f"trained {args.epochs} epochs with a learnable `beta` per channel: accuracy "
          f"{history.history['accuracy'][-1]:.3f}, beta in [{learned_beta.min():.3f}, "
          f"{learned_beta.max():.3f}]")
    print(f"saved and reloaded (safe_mode=True): predictions identical: {same}")


if __name__ == "__main__":
    main()
