"""One Keras script, three Keras backends: `nestad_tf.convert(model)` saves memory on each.

The script below (`train_and_measure`) builds an MLP with mish and gelu on
scikit-learn's digits, trains it with `model.fit` with Keras' activations and
converted by `nestad_tf.convert`, and measures what a training step keeps, the
way each framework lets one read it:

  tensorflow  peak of TensorFlow's CPU allocator during one compiled train step
              (graph mode), above what was allocated before it;
  torch       bytes of the tensors autograd saves for the backward pass during
              one training forward (torch.autograd.graph.saved_tensors_hooks; each
              storage once, the weights not counted);
  jax         XLA's temp buffer bytes of the jitted train step
              (jax.jit(...).lower(...).compile().memory_analysis()).

The numbers are comparable within a backend (Keras vs nestad), not across them.
Each backend runs in its own process (KERAS_BACKEND is read at Keras' import);
backends whose framework is not installed are skipped.

    python examples/keras_backends.py [--backends tensorflow,torch,jax] [--width 512] [--batch 256]
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

MiB = 2 ** 20


def train_and_measure(width: int, depth: int, batch: int, epochs: int) -> dict:
    """The Keras script: the same on every backend (KERAS_BACKEND is set by the caller)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Allocator peaks (get_memory_info) on every x86 CPU: TensorFlow keeps them only in its
    # BFC allocator, the default only where oneDNN is on (AVX-512 CPUs; not on e.g. AMD EPYC).
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    import keras  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    import nestad_tf  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x, y = x[:batch * (len(x) // batch)], y[:batch * (len(y) // batch)]

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((x.shape[1],))
        h = inputs
        for i in range(depth):
            h = keras.layers.Dense(width)(h)
            h = keras.layers.Activation("mish" if i % 2 == 0 else "gelu")(h)
        return keras.Model(inputs, keras.layers.Dense(10)(h))

    results = {"backend": keras.backend.backend()}
    for name in ("keras", "nestad"):
        model = build()
        if name == "nestad":
            # include=: on torch, Keras' gelu keeps only x already (convert() alone
            # would leave it); converting it too keeps the comparison one-for-one.
            model = nestad_tf.convert(model, include=["mish", "gelu"])
        model.compile(keras.optimizers.Adam(0.003),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        history = model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
        results[name] = {
            "kept_bytes": _step_bytes(model, x[:batch], y[:batch]),
            "loss": [float(v) for v in history.history["loss"]],
            "accuracy": float(history.history["accuracy"][-1]),
        }
    return results


def _step_bytes(model, x, y) -> int:
    """What one training step keeps for its backward pass, read as this backend allows."""
    import keras  # pylint: disable=g-import-not-at-top

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    backend = keras.backend.backend()
    if backend == "torch":
        import torch  # pylint: disable=g-import-not-at-top

        saved = {}

        def pack(t):
            if not (t.requires_grad and t.grad_fn is None):  # not the weights (kept anyway)
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn(torch.as_tensor(y), model(torch.as_tensor(x), training=True))
        return int(sum(saved.values()))
    if backend == "jax":
        import jax  # pylint: disable=g-import-not-at-top

        def loss(trainable, non_trainable, x, y):
            out, _ = model.stateless_call(trainable, non_trainable, x, training=True)
            return loss_fn(y, out)

        step = jax.jit(jax.grad(loss))
        args = ([v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables], x, y)
        return int(step.lower(*args).compile().memory_analysis().temp_size_in_bytes)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss_fn(y, model(x, training=True))
        return tape.gradient(value, model.trainable_variables)

    x, y = tf.constant(x), tf.constant(y)
    step(x, y)  # trace
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    step(x, y)
    return int(tf.config.experimental.get_memory_info("CPU:0")["peak"] - before)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="tensorflow,torch,jax")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_and_measure(args.width, args.depth, args.batch, args.epochs)))
        return 0
    print(f"MLP {args.depth} x Dense({args.width}) mish/gelu on digits, batch {args.batch}, "
          f"{args.epochs} epochs of model.fit per model")
    print(f"{'backend':<11} {'measure':<24} {'Keras':>10} {'nestad':>10} {'ratio':>6}  final loss "
          "Keras / nestad")
    measures = {"tensorflow": "allocator peak, MiB", "torch": "autograd saved, MiB",
                "jax": "XLA temp buffers, MiB"}
    for backend in args.backends.split(","):
        needed = {"torch": "torch", "jax": "jax"}.get(backend)
        if needed and importlib.util.find_spec(needed) is None:
            print(f"{backend:<11} skipped: {needed} is not installed (pip install 'nestad_tf[{needed}]')")
            continue
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        command = [sys.executable, os.path.abspath(__file__), "--child", "--width", str(args.width),
                   "--depth", str(args.depth), "--batch", str(args.batch), "--epochs",
                   str(args.epochs)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stdout + done.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        keras_bytes, nestad_bytes = result["keras"]["kept_bytes"], result["nestad"]["kept_bytes"]
        print(f"{backend:<11} {measures[backend]:<24} {keras_bytes / MiB:>10.2f} "
              f"{nestad_bytes / MiB:>10.2f} {keras_bytes / max(nestad_bytes, 1):>5.2f}x  "
              f"{result['keras']['loss'][-1]:.4f} / {result['nestad']['loss'][-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
