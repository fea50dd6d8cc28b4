"""Mixed precision with nestad: convert, then train as usual under a Keras policy.

    python examples/mixed_precision.py                 # mixed_float16 (loss scaling on)
    python examples/mixed_precision.py mixed_bfloat16

nestad activations run in the layer's compute dtype (float16/bfloat16 tensors in and out,
f'(x) kept in that dtype) with float32 math inside; variables stay float32, and Keras wraps
the optimizer in a LossScaleOptimizer for mixed_float16 as it always does.
"""

import sys

import numpy as np
import keras

import nestad_tf

policy = sys.argv[1] if len(sys.argv) > 1 else "mixed_float16"
keras.mixed_precision.set_global_policy(policy)  # before building the model

inputs = keras.Input((32, 32, 3))
h = keras.layers.Conv2D(16, 3, padding="same", activation="mish")(inputs)
h = keras.layers.Conv2D(16, 3, strides=2, padding="same")(h)
h = keras.layers.Activation("gelu")(h)
h = keras.layers.GlobalAveragePooling2D()(h)
outputs = keras.layers.Dense(10, dtype="float32")(h)  # logits in float32 for a stable loss
model = nestad_tf.convert(keras.Model(inputs, outputs), verbose=True)

model.compile(optimizer="adam",
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
print("optimizer:", type(model.optimizer).__name__)  # LossScaleOptimizer under mixed_float16

rng = np.random.RandomState(0)
images = rng.rand(64, 32, 32, 3).astype("float32")
labels = rng.randint(0, 10, 64)
model.fit(images, labels, batch_size=16, epochs=2, verbose=2)
