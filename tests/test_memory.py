"""Memory: a tf.function training step keeps less with nestad than with Keras' composites.

Peaks come from the CPU allocator (tf.config.experimental.get_memory_info), for
a real stack of Dense layers and a loss on the last layer's output, each
variant measured in the same test run, repeated, with garbage collection kept
out of the measurement (tests/allocator.py). Nothing is compared to an absolute
number: medians are compared, with half the measured spread as margin.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import nestad_tf
import allocator

BATCH, WIDTH, DEPTH = 512, 512, 6
ACTIVATION_BYTES = BATCH * WIDTH * 4  # 1 MiB


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


def training_step_peak(activation) -> allocator.Measurement:
    """Peak bytes of the traced step above what is allocated before it, per repeat."""
    step = training_step(activation)
    step()  # trace

    def finite_step():
        assert np.isfinite(step().numpy())

    return allocator.repeat(lambda: allocator.peak_above_current(finite_step))


@pytest.mark.parametrize("name", ["mish", "gelu"])
def test_training_step_peak_is_lower_than_keras_composite(name):
    keras_peak = training_step_peak(getattr(keras.activations, name))
    kernel_peak = training_step_peak(getattr(nestad_tf, name))
    tf_peak = training_step_peak(nestad_tf.get(name, backend="tf"))
    allocator.record(f"peak/{name}", keras=keras_peak, nestad_kernel=kernel_peak,
                     nestad_tf=tf_peak)
    # Per layer, at least one activation-sized tensor saved by the kernel and half of
    # one by the pure-TF path (measured: 2 and 1.5).
    allocator.assert_lower(kernel_peak, keras_peak, DEPTH * ACTIVATION_BYTES,
                           f"{name}: nestad kernel step peak vs Keras")
    allocator.assert_lower(tf_peak, keras_peak, DEPTH * ACTIVATION_BYTES / 2,
                           f"{name}: nestad pure-TF step peak vs Keras")


def fit_step_peaks(activation, steps=8) -> allocator.Measurement:
    """Peaks of the training steps of `model.fit` (per batch, by a callback), but the first."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((WIDTH,))]
        + [keras.layers.Dense(WIDTH, activation=activation) for _ in range(DEPTH)]
        + [keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * BATCH, WIDTH)).astype("float32")
    y = rng.normal(size=(steps * BATCH, 1)).astype("float32")
    peaks = allocator.FitStepPeaks()
    history = model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[peaks], verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert len(peaks.values) == steps
    return allocator.Measurement(peaks.values[1:])  # the first step traces and builds


@pytest.mark.parametrize("name", ["mish", "gelu"])
def test_fit_step_peak_is_lower_than_keras_composite(name):
    """model.fit, as users train: the same saving per step as a hand-written step."""
    keras_peak = fit_step_peaks(getattr(keras.activations, name))
    nestad_peak = fit_step_peaks(getattr(nestad_tf, name))
    allocator.record(f"fit/{name}", keras=keras_peak, nestad=nestad_peak)
    allocator.assert_lower(nestad_peak, keras_peak, DEPTH * ACTIVATION_BYTES,
                           f"{name}: model.fit step peak, nestad vs Keras")


def test_eager_training_keeps_less_than_keras():
    """Eager: per layer the tape holds f'(x) and y (which the next matmul keeps anyway).

    Neither x nor the composite's intermediates are held, so each layer holds one
    activation-sized tensor less than Keras' mish (which holds x and
    tanh(softplus(x))). Asked: 3/4 of it, in 4 MiB tensors, as counts carry an offset
    from one process to the next (up to 1.3 MiB seen in CI).
    """
    rows, width, depth = 1024, 1024, 4
    size = rows * width * 4
    keras_held = allocator.held_by_eager_tape(keras.activations.mish, rows, width, depth)
    nestad_held = allocator.held_by_eager_tape(nestad_tf.mish, rows, width, depth)
    allocator.record("eager/mish", keras=keras_held, nestad=nestad_held,
                     activation_mib=size / allocator.MiB)
    allocator.assert_lower(nestad_held, keras_held, 0.75 * depth * size,
                           f"eager, {depth} x (matmul, mish): held by the tape")


def resident_growth(activation) -> int:
    """Bytes a traced training step keeps allocated between calls (after two calls).

    The model is built and the optimizer's slots created first, so what remains
    is what the traced function holds: constants folded into its graph.
    """
    step = training_step(activation)

    def two_steps():
        step()
        step()

    return allocator.growth(two_steps)


def _activation_with_a_folded_constant(x):
    """Keras' gelu plus an activation-sized constant in the traced graph (what the
    pure-TF path once kept): the regression the test below must see."""
    return keras.activations.gelu(x) + tf.constant(np.full((BATCH, WIDTH), 1e-3, np.float32))


def assert_holds_no_activation_sized_constant(activation, keras_activation, what):
    """Median growth of fresh traced steps, against Keras' (clamped at >= 0).

    A folded activation-sized constant adds ACTIVATION_BYTES to every repeat, so
    it moves the median by that much: the limit is half of it.
    """
    baseline = allocator.repeat(lambda: resident_growth(keras_activation), 3)
    growth = allocator.repeat(lambda: resident_growth(activation), 3)
    allocator.record(f"resident/{what}", keras=baseline, measured=growth)
    allocator.assert_not_above(growth, baseline, ACTIVATION_BYTES / 2,
                               f"{what}: what a traced step keeps")


@pytest.mark.parametrize("name", ["gelu", "silu", "mish"])
@pytest.mark.parametrize("backend", ["kernel", "tf"])
def test_traced_step_holds_no_activation_sized_constants(name, backend):
    # The pure-TF path once kept x-sized constants folded from forward-mode AD's
    # unit tangent and the zero tangents of constant operands (0.5 in 0.5 * x):
    # one per op and shape, for the lifetime of the traced step.
    assert_holds_no_activation_sized_constant(nestad_tf.get(name, backend=backend),
                                              getattr(keras.activations, name),
                                              f"{name}/{backend}")


def test_the_check_sees_an_activation_sized_constant():
    with pytest.raises(AssertionError, match="1.00 MiB above the baseline"):
        assert_holds_no_activation_sized_constant(_activation_with_a_folded_constant,
                                                  keras.activations.gelu, "gelu + constant")
