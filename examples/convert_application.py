"""Convert a keras.applications model, compare training peak memory, train on synthetic data.

    python examples/convert_application.py                      # ConvNeXt-Tiny (gelu), 64 px
    python examples/convert_application.py --model efficientnet_mish --image-size 96

Peak memory is measured in this process, for one training step (forward, backward and
an SGD update inside one tf.function) of the original and of the converted model with the
same weights and batch: tf.config.experimental.reset_memory_stats / get_memory_info("CPU:0")
give TensorFlow's allocator peak (on a GPU use "GPU:0").
"""

import argparse
import os
import time

# Allocator peaks (get_memory_info) on every x86 CPU: TensorFlow keeps them only in its
# BFC allocator, the default only where oneDNN is on (AVX-512 CPUs; not on e.g. AMD EPYC).
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

import nestad_tf  # noqa: E402


def build(name, image_size, classes):
    shape = (image_size, image_size, 3)
    if name == "convnext":
        return keras.applications.ConvNeXtTiny(weights=None, input_shape=shape, classes=classes,
                                               classifier_activation=None)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=shape, classes=classes,
                                              classifier_activation=None)
    if name == "efficientnet":
        return model

    def to_mish(layer):  # the same network with mish instead of silu
        config = layer.get_config()
        if config.get("activation") in ("swish", "silu"):
            config["activation"] = "mish"
        return layer.__class__.from_config(config)

    switched = keras.models.clone_model(model, clone_function=to_mish)
    switched.set_weights(model.get_weights())
    return switched


def train_step_peak(model, images, labels, device="CPU:0"):
    """Allocator peak (bytes) and seconds of one traced training step."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    step(images, labels)  # trace and warm up
    tf.config.experimental.reset_memory_stats(device)
    start = time.perf_counter()
    step(images, labels).numpy()
    seconds = time.perf_counter() - start
    return tf.config.experimental.get_memory_info(device)["peak"], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["convnext", "efficientnet", "efficientnet_mish"],
                        default="convnext")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    original = build(args.model, args.image_size, args.classes)
    converted = nestad_tf.convert(original, verbose=True)       # the one line
    report = nestad_tf.memory_report(converted)

    rng = np.random.RandomState(0)
    images = rng.uniform(0, 255, (args.batch, args.image_size, args.image_size, 3)).astype("float32")
    labels = rng.randint(0, args.classes, args.batch)

    before, t_before = train_step_peak(original, images, labels)
    after, t_after = train_step_peak(converted, images, labels)
    print(f"\n{args.model}, batch {args.batch}, {args.image_size} px, one training step:")
    print(f"  Keras activations : peak {before / 2**20:8.1f} MiB, {t_before:.2f} s")
    print(f"  nestad (converted): peak {after / 2**20:8.1f} MiB, {t_after:.2f} s")
    print(f"  saving: {(before - after) / 2**20:.1f} MiB ({100 * (before - after) / before:.1f} %); "
          f"memory_report predicts {(report.keras_bytes_per_sample - report.bytes_per_sample) * args.batch / 2**20:.1f} MiB")

    converted.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    converted.fit(images, labels, batch_size=max(1, args.batch // 2), epochs=args.epochs, verbose=2)


if __name__ == "__main__":
    main()
