"""Train a Keras model with nestad activations and print the memory it saves.

The model is an MLP with mish and gelu activations on scikit-learn's digits
data set (real data shipped inside scikit-learn). It is built once with Keras'
own activations, then converted with one line, `nestad_tf.convert(model)`.
Both train the same way; for each, the peak allocator memory of one training
step (`model.train_on_batch`, a tf.function) is measured in this same run.

    python examples/train_memory.py [--width 1024] [--batch 1024] [--epochs 5]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import nestad_tf  # noqa: E402


def build_model(width, depth):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    h = inputs
    for i in range(depth):
        h = keras.layers.Dense(width, activation="mish" if i % 2 == 0 else "gelu")(h)
    outputs = keras.layers.Dense(10)(h)
    return keras.Model(inputs, outputs)


def step_peak_mib(model, x, y):
    model.train_on_batch(x, y)  # trace the train function first
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    start = time.perf_counter()
    model.train_on_batch(x, y)
    seconds = time.perf_counter() - start
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return (peak - before) / 2**20, seconds


def run(model, data, args):
    x_train, x_test, y_train, y_test = data
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    peak, seconds = step_peak_mib(model, x_train[: args.batch], y_train[: args.batch])
    model.fit(x_train, y_train, batch_size=args.batch, epochs=args.epochs, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return peak, seconds, accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    data = train_test_split(x, digits.target, test_size=0.25, random_state=0)
    data[0] = np.tile(data[0], (2, 1))  # 2694 training rows: at least two full batches
    data[2] = np.tile(data[2], 2)

    info = nestad_tf.backend_info()
    print(f"nestad_tf {nestad_tf.__version__}, TensorFlow {info['tensorflow']}, "
          f"kernels: {info['reason']}")
    keras_model = build_model(args.width, args.depth)
    nestad_model = nestad_tf.convert(build_model(args.width, args.depth))

    results = {"keras": run(keras_model, data, args), "nestad": run(nestad_model, data, args)}
    print(f"\nMLP {args.depth} x Dense({args.width}) with mish/gelu, batch {args.batch}, "
          f"digits ({args.epochs} epochs)")
    print(f"{'':8} {'peak MiB/step':>14} {'step s':>8} {'test acc':>9}")
    for name, (peak, seconds, accuracy) in results.items():
        print(f"{name:8} {peak:14.1f} {seconds:8.3f} {accuracy:9.3f}")
    keras_peak, nestad_peak = results["keras"][0], results["nestad"][0]
    if nestad_peak <= 0:
        # TensorFlow's CPU allocator statistics count only allocations of 256 KiB
        # and more; smaller tensors go to an allocator without statistics.
        print("\nthe step's tensors are too small to measure (the CPU allocator counts only "
              "allocations of 256 KiB and more): use a larger --width or --batch")
        return
    print(f"\nnestad saved {keras_peak - nestad_peak:.1f} MiB of training-step peak memory "
          f"({keras_peak / nestad_peak:.2f}x lower)")


if __name__ == "__main__":
    main()
