"""Memory: a tf.function training step keeps less with nestad than with Keras' composites.

Peaks come from the CPU allocator (tf.config.experimental.get_memory_info), for
a real stack of Dense layers and a loss on the last layer's output, each
variant measured in the same test run. Nothing is compared to an absolute number.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestad_tf

BATCH, WIDTH, DEPTH = 512, 512, 6


def training_step(activation):
    """A traced SGD step of DEPTH Dense layers with `activation`; model and slots built."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((WIDTH,))]
        + [keras.layers.Dense(WIDTH, activation=activation) for _ in range(DEPTH)]
        + [keras.layers.Dense(1)]
    )
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(model.trainable_variables)
    x = tf.random.normal((BATCH, WIDTH), seed=1)
    y = tf.random.normal((BATCH, 1), seed=2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def training_step_peak(activation):
    step = training_step(activation)
    step()  # trace
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    loss = step()
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    assert np.isfinite(loss.numpy())
    return peak - before


@pytest.mark.parametrize("name", ["mish", "gelu"])
def test_training_step_peak_is_lower_than_keras_composite(name):
    activation_bytes = BATCH * WIDTH * 4
    keras_peak = training_step_peak(getattr(keras.activations, name))
    nestad_kernel_peak = training_step_peak(getattr(nestad_tf, name))
    nestad_tf_peak = training_step_peak(nestad_tf.get(name, backend="tf"))
    print(f"{name}: keras {keras_peak / 2**20:.1f} MiB, nestad kernel "
          f"{nestad_kernel_peak / 2**20:.1f} MiB, nestad tf {nestad_tf_peak / 2**20:.1f} MiB")
    # At least one activation-sized tensor saved per layer.
    assert nestad_kernel_peak <= keras_peak - DEPTH * activation_bytes
    assert nestad_tf_peak < keras_peak


def test_eager_training_keeps_less_than_keras():
    """Eager: per layer the tape holds f'(x) and y (which the next matmul keeps anyway).

    Neither x nor the composite's intermediates are held, so each layer holds at
    least one activation-sized tensor less than Keras' mish.
    """
    rows, width, depth = 256, 1024, 4
    size = rows * width * 4
    weights = [tf.random.normal((width, width), stddev=width ** -0.5, seed=i) for i in range(depth)]
    x = tf.random.normal((rows, width), seed=9)

    def held_by_tape(activation):
        start = tf.config.experimental.get_memory_info("CPU:0")["current"]
        with tf.GradientTape() as tape:
            tape.watch(x)
            h = x
            for w in weights:
                h = activation(tf.matmul(h, w))
            loss = tf.reduce_sum(h)
        held = tf.config.experimental.get_memory_info("CPU:0")["current"] - start
        grad = tape.gradient(loss, x)
        assert np.isfinite(grad.numpy()).all()
        return held

    keras_held = held_by_tape(keras.activations.mish)
    nestad_held = held_by_tape(nestad_tf.mish)
    print(f"eager, {depth} x (matmul, mish): keras holds {keras_held / size:.1f}, "
          f"nestad {nestad_held / size:.1f} activation-sized tensors")
    assert nestad_held <= keras_held - depth * size


def resident_growth(activation):
    """Bytes a traced training step keeps allocated between calls (after two calls).

    The model is built and the optimizer's slots created first, so what remains
    is what the traced function holds: constants folded into its graph.
    """
    step = training_step(activation)
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    step()
    step()
    return tf.config.experimental.get_memory_info("CPU:0")["current"] - before


@pytest.mark.parametrize("name", ["gelu", "silu", "mish"])
@pytest.mark.parametrize("backend", ["kernel", "tf"])
def test_traced_step_holds_no_activation_sized_constants(name, backend):
    # The pure-TF path once kept x-sized constants folded from forward-mode AD's
    # unit tangent and the zero tangents of constant operands (0.5 in 0.5 * x):
    # one per op and shape, for the lifetime of the traced step.
    activation_bytes = BATCH * WIDTH * 4
    keras_growth = resident_growth(getattr(keras.activations, name))
    nestad_growth = resident_growth(nestad_tf.get(name, backend=backend))
    print(f"{name}/{backend}: resident growth keras {keras_growth / 2**20:.2f} MiB, "
          f"nestad {nestad_growth / 2**20:.2f} MiB")
    assert nestad_growth < keras_growth + activation_bytes // 2
