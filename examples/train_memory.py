"""Train a Keras model with model.fit, with and without nestad activations, and print the memory saved.

The model is an MLP with mish and gelu activations on scikit-learn's digits
data set (real data shipped inside scikit-learn). It is built once with Keras'
own activations, then converted with one line, `nestad_tf.convert(model)`.
Both train with `model.fit` (Keras' progress bar shows each step's peak); a
callback reads TensorFlow's CPU allocator around every batch, in this same run:
a step's peak is the most memory allocated during it above what was allocated
when it began (the weights, optimizer slots and data stay out of it).

    python examples/train_memory.py [--width 1024] [--depth 4] [--batch 1024] [--epochs 5]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Allocator peaks (get_memory_info) on every x86 CPU: TensorFlow keeps them only in its
# BFC allocator, the default only where oneDNN is on (AVX-512 CPUs; not on e.g. AMD EPYC).
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import nestad_tf  # noqa: E402

MiB = 2 ** 20


class StepPeakMemory(keras.callbacks.Callback):
    """Peak CPU allocator memory of every training step, above the memory in use at its start.

    Shown as `peak_mib` in Keras' progress bar (per batch; at the end of an epoch,
    the epoch's largest). `peaks_mib` and `seconds` hold every step; the first one
    also traces the train function and creates the optimizer's slots.
    """

    def __init__(self, device="CPU:0"):
        super().__init__()
        self.device = device
        self.peaks_mib, self.seconds = [], []

    def on_train_batch_begin(self, batch, logs=None):
        tf.config.experimental.reset_memory_stats(self.device)
        self._start = tf.config.experimental.get_memory_info(self.device)["current"]
        self._time = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._time)
        peak = tf.config.experimental.get_memory_info(self.device)["peak"] - self._start
        self.peaks_mib.append(peak / MiB)
        if logs is not None:
            logs["peak_mib"] = self.peaks_mib[-1]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = len(self.peaks_mib)

    def on_epoch_end(self, epoch, logs=None):
        epoch_peaks = self.peaks_mib[max(self._epoch_start, 1):]
        if logs is not None and epoch_peaks:
            logs["peak_mib"] = max(epoch_peaks)


def build_model(width, depth):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    h = inputs
    for i in range(depth):
        h = keras.layers.Dense(width, activation="mish" if i % 2 == 0 else "gelu")(h)
    outputs = keras.layers.Dense(10)(h)
    return keras.Model(inputs, outputs)


def run(model, data, args):
    x_train, x_test, y_train, y_test = data
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    memory = StepPeakMemory()
    model.fit(x_train, y_train, batch_size=args.batch, epochs=args.epochs, callbacks=[memory],
              verbose=args.verbose)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    # The first step traces the train function and creates the optimizer's slots.
    return memory.peaks_mib[1:], statistics.median(memory.seconds[1:]), accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--verbose", default="auto", help="model.fit's verbose (0, 1, 2, auto)")
    args = parser.parse_args()
    args.verbose = args.verbose if args.verbose == "auto" else int(args.verbose)

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25,
                                                        random_state=0)
    # Whole batches only (at least two), so that every step has the same shape.
    rows = max(2, len(x_train) // args.batch) * args.batch
    repeats = -(-rows // len(x_train))
    x_train = np.tile(x_train, (repeats, 1))[:rows]
    y_train = np.tile(y_train, repeats)[:rows]
    data = (x_train, x_test, y_train, y_test)

    info = nestad_tf.backend_info()
    print(f"nestad_tf {nestad_tf.__version__}, TensorFlow {info['tensorflow']}, "
          f"kernels: {info['reason']}")
    keras_model = build_model(args.width, args.depth)
    nestad_model = nestad_tf.convert(build_model(args.width, args.depth))

    results = {}
    for name, model in (("keras", keras_model), ("nestad", nestad_model)):
        print(f"\nmodel.fit with {name} activations")
        results[name] = run(model, data, args)
    print(f"\nMLP {args.depth} x Dense({args.width}) with mish/gelu, batch {args.batch}, "
          f"digits ({args.epochs} epochs, {rows // args.batch} steps each)")
    print(f"{'':8} {'step peak MiB (median, max)':>28} {'s/step':>8} {'test acc':>9}"
          "   (steps after the first)")
    for name, (peaks, seconds, accuracy) in results.items():
        print(f"{name:8} {statistics.median(peaks):19.1f} {max(peaks):8.1f} {seconds:8.3f} "
              f"{accuracy:9.3f}")
    keras_peak = statistics.median(results["keras"][0])
    nestad_peak = statistics.median(results["nestad"][0])
    if nestad_peak <= 0:
        # TensorFlow's CPU allocator statistics count only allocations of 256 KiB
        # and more; smaller tensors go to an allocator without statistics.
        print("\nthe step's tensors are too small to measure (the CPU allocator counts only "
              "allocations of 256 KiB and more): use a larger --width or --batch")
        return
    print(f"\nnestad saved {keras_peak - nestad_peak:.1f} MiB of training-step peak memory "
          f"in model.fit ({keras_peak / nestad_peak:.2f}x lower)")


if __name__ == "__main__":
    main()
