"""Train a converted model with tf.distribute.MirroredStrategy (no engine of nestad's own).

    python examples/distributed.py            # 2 replicas on 2 logical CPU devices

On GPUs use `tf.distribute.MirroredStrategy()` (all visible GPUs). Create (or convert) the
model and compile it inside `strategy.scope()` so that its variables are mirrored; nestad's
activations hold no variables and need nothing else.

MultiWorkerMirroredStrategy works the same way: set TF_CONFIG in every worker, e.g. for two
workers on one host

    TF_CONFIG='{"cluster": {"worker": ["localhost:12345", "localhost:12346"]},
                "task": {"type": "worker", "index": 0}}' python train.py   # index 1 in the other

and in train.py

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = nestad_tf.convert(build_model())
        model.compile(...)
    model.fit(dataset, ...)          # each worker passes its shard or the same global dataset

The C++ kernels must be installed on every worker (each runs its own TensorFlow process).
"""

import numpy as np
import tensorflow as tf

# Split the CPU into two logical devices before TensorFlow initialises its devices.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import keras  # noqa: E402

import nestad_tf  # noqa: E402

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
print("replicas:", strategy.num_replicas_in_sync)

with strategy.scope():
    inputs = keras.Input((16,))
    h = keras.layers.Dense(64, activation="gelu")(inputs)
    h = keras.layers.Dense(64, activation="mish")(h)
    outputs = keras.layers.Dense(4)(h)
    model = nestad_tf.convert(keras.Model(inputs, outputs), verbose=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

rng = np.random.RandomState(0)
x = rng.randn(256, 16).astype("float32")
y = rng.randint(0, 4, 256)
model.fit(x, y, batch_size=32, epochs=3, verbose=2)  # global batch 32: 16 per replica
